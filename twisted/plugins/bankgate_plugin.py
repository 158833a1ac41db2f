from twisted.application.service import ServiceMaker

bankgate = ServiceMaker(
    "bankgate", "bankgate.app.tap", "Real-time bank collection gateway for utility billing",
    "bankgate",
)
