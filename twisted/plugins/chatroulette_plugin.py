from twisted.application.service import ServiceMaker

chatroulette = ServiceMaker(
    "chatroulette",
    "chatroulette.tap",
    "Anonymous one-to-one random text chat over WebSocket.",
    "chatroulette",
)
