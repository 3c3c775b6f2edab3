from twisted.application.reactors import Reactor

netecho_epoll = Reactor(
    "netecho-epoll",
    "netecho.reactor",
    "epoll without a log context per event (faster echo; see netecho.reactor)",
)
