"""The alerts page ``/alerts`` (viewers): the open alerts and the recent episodes.

Everything on it is the alert service's memory (:class:`bankgate.app.alerts.AlertService`),
so the page answers when the database does not -- and then shows
``database-unreachable`` among the open alerts.  Open alerts come critical first, then
oldest first, each with what to do about it; the episodes newest first, with when each
was raised and cleared.  ``docs/console.rst`` (*Alerts*) explains each kind.
"""

from __future__ import annotations

from twisted.web import pages, resource

from bankgate.domain.alerts import ADVICE

HISTORY = 100  # episodes the page lists


def _when(t) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}" if t is not None else ""


class AlertsPage(resource.Resource):
    """``GET /alerts``.  ``alerts``: the service's alert service, or ``None`` when
    alerts are off (``[alerts] enabled = false``)."""

    isLeaf = True

    def __init__(self, console, alerts):
        super().__init__()
        self.console, self.alerts = console, alerts

    def render_GET(self, request):  # noqa: N802
        if request.postpath not in ([], [b""]):
            return pages.notFound().render(request)
        a = self.alerts
        if a is None:
            return self.console.page(request, "alerts.html", title="Alerts", off=True,
                                     open=[], episodes=[], checked="", interval="", more=False)
        episodes = a.episodes()
        return self.console.page(
            request, "alerts.html", title="Alerts", off=False,
            open=[self._row(e) for e in a.open_alerts()],
            episodes=[self._row(e) for e in episodes[:HISTORY]],
            more=len(episodes) > HISTORY, checked=_when(a.last_check),
            interval=f"{a.interval:g}")

    @staticmethod
    def _row(e) -> dict:
        al = e.alert
        return {"kind": al.kind, "subject": al.subject, "severity": al.severity,
                "message": al.message, "since": _when(al.since),
                "raised": _when(e.raised_at), "cleared": _when(e.cleared_at),
                "advice": ADVICE.get(al.kind, "")}


def mount(console, alerts) -> AlertsPage:
    """Mount ``/alerts`` for viewers on ``console``."""
    page = AlertsPage(console, alerts)
    console.mount("alerts", page, role="viewer")
    return page
