"""notify test: a test mail to both lists, with the mail server's answer."""

from __future__ import annotations

from typing import Any

from loadmgrd.notifier import SendError, send_now
from loadmgrd.protocol import NoParams
from loadmgrd.rpc import Context, method


@method("notify.test", admin=True, params=NoParams)
async def notify_test(ctx: Context, params: NoParams) -> dict[str, Any]:
    """Send a test mail to the success and failure lists now; report what the server answered."""
    results = []
    for name, recipients, msg in ctx.services.notifier.test_mails():
        try:
            answer = await send_now(ctx.config.email, msg)
        except SendError as exc:
            results.append({"list": name, "recipients": recipients, "sent": False, "error": str(exc)})
        else:
            results.append({"list": name, "recipients": recipients, "sent": True, "answer": answer.strip()})
    email = ctx.config.email
    return {"server": f"{email.smtp_host}:{email.smtp_port}", "results": results}
