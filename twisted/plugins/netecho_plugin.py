from twisted.application.service import ServiceMaker

netecho = ServiceMaker(
    "netecho",
    "netecho.tap",
    "TCP, UDP and Unix-socket echo, random numbers and PB RPC",
    "netecho",
)
