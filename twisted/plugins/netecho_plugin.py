from twisted.application.service import ServiceMaker

netecho = ServiceMaker(
    "netecho",
    "netecho.tap",
    "TCP, UDP and Unix-socket echo and a random-number service",
    "netecho",
)
