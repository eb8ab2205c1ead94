"""The review page (``GET /review``): the video next to its product card, the prompt and how it was made,
approve or reject with a reason, all from the keyboard.

Every value that comes from a product, a prompt or an event is escaped (``html.escape`` with quotes) where it
is written into the page, and URLs are written only when they are http(s): a title ``<script>…`` renders as
text. The page's own script carries a per-response nonce and the Content-Security-Policy allows no other
script, so markup that slipped through could still not run.

Shortcuts: ``A`` approve; ``1``-``6`` reject as wrong product, visual artefacts, garbled text, unsafe,
off-brand, other (other needs a note: ``N`` focuses it, Ctrl+Enter sends); Space play/pause; ``R`` replay.
After a verdict the page loads the next video.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

from review.desk import Opened
from schemas.events import RejectReason

REASON_LABELS = {
    RejectReason.WRONG_PRODUCT: "Wrong product",
    RejectReason.VISUAL_ARTEFACTS: "Visual artefacts",
    RejectReason.GARBLED_TEXT: "Garbled text",
    RejectReason.UNSAFE: "Unsafe",
    RejectReason.OFF_BRAND: "Off-brand",
    RejectReason.OTHER: "Other (note)",
}
SHORTCUTS = {str(n): reason for n, reason in enumerate(REASON_LABELS, start=1)}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans CJK SC','WenQuanYi Micro Hei',sans-serif;
margin:0;color:#1c1c1c;background:#f6f6f4}
header{display:flex;gap:18px;align-items:baseline;padding:10px 20px;background:#1c1c1c;color:#fff}
header b{font-weight:600}.depth{margin-left:auto}
main{display:grid;grid-template-columns:minmax(320px,1.3fr) minmax(280px,1fr);gap:20px;padding:16px 20px}
video{width:100%;max-height:62vh;background:#000;border-radius:6px}
.card{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 3px #0002}
.card img{max-width:100%;max-height:200px;border-radius:4px}.card h2{font-size:18px;margin:8px 0}
.muted{color:#666}.prompt{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:8px;border-radius:4px}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.tag{display:inline-block;background:#e7f0ff;color:#1f5fbf;border-radius:10px;padding:0 8px;margin-right:4px}
footer{position:sticky;bottom:0;background:#fff;border-top:1px solid #ddd;padding:10px 20px;display:flex;
flex-wrap:wrap;gap:8px;align-items:center}
button{font:inherit;padding:6px 12px;border:1px solid #bbb;border-radius:5px;background:#fff;cursor:pointer}
button.approve{background:#2b8a3e;color:#fff;border-color:#2b8a3e}button.reject{border-color:#c92a2a;color:#c92a2a}
kbd{font:12px ui-monospace,monospace;background:#eee;border-radius:3px;padding:0 4px}
textarea{font:inherit;width:280px;height:34px}#status{min-width:200px;color:#c92a2a}
.empty{padding:60px;text-align:center;font-size:18px}
"""

SCRIPT = """
const page = document.body.dataset, status = document.getElementById('status');
const video = document.getElementById('video'), note = document.getElementById('note');
const reasons = %(shortcuts)s;
let busy = false;
async function send(verdict, reason) {
  if (busy || !page.requestKey) return;
  if (reason === 'other' && !note.value.trim()) { status.textContent = 'reason "other" needs a note'; note.focus(); return; }
  busy = true; status.textContent = 'sending…';
  try {
    const answer = await fetch('/review/api/verdict', {method: 'POST', credentials: 'same-origin',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify({request_key: page.requestKey, claim_id: page.claimId, verdict: verdict, reason: reason,
                            note: note.value})});
    if (answer.ok || answer.status === 409) { location.replace('/review'); return; }
    const body = await answer.json().catch(() => ({}));
    status.textContent = (body.reason || answer.status) + ': ' + (body.message || '');
  } catch (error) { status.textContent = 'not sent: ' + error; }
  busy = false;
}
document.querySelectorAll('button[data-verdict]').forEach(button => button.addEventListener('click',
  () => send(button.dataset.verdict, button.dataset.reason || null)));
document.addEventListener('keydown', event => {
  if (event.target === note) {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); send('rejected', 'other'); }
    else if (event.key === 'Escape') note.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === 'a') send('approved', null);
  else if (reasons[key]) send('rejected', reasons[key]);
  else if (key === 'n') { event.preventDefault(); note.focus(); }
  else if (key === ' ' && video) { event.preventDefault(); video.paused ? video.play() : video.pause(); }
  else if (key === 'r' && video) { video.currentTime = 0; video.play(); }
});
if (!page.requestKey) setTimeout(() => location.replace('/review'), 10000);
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def safe_url(url: str | None) -> str | None:
    """``url`` when it is http(s) (written escaped); None for anything else (``javascript:``, ``file:`` …)."""
    if url and url.split(":", 1)[0].lower() in ("http", "https"):
        return url
    return None


def content_security_policy(nonce: str) -> str:
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src http: https: data:; "
            "media-src http: https:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def render_page(opened: Opened | None, *, reviewer: str, waiting: int, in_review: int, nonce: str) -> str:
    """The whole page for ``reviewer``: ``opened`` (the video they hold) or an empty queue."""
    head = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>skuvid review</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<style nonce="{esc(nonce)}">{CSS}</style></head>')
    header = (f'<header><span>skuvid review</span><span>reviewer <b id="reviewer">{esc(reviewer)}</b></span>'
              f'<span class="depth" id="depth" data-waiting="{waiting}" data-in-review="{in_review}">queue: '
              f'{waiting} waiting · {in_review} in review</span></header>')
    if opened is None:
        body = f'<body>{header}<div class="empty" id="empty">Nothing to review right now.</div>'
    else:
        body = _item_body(opened, header)
    script = SCRIPT % {"shortcuts": _json_object({k: v.value for k, v in SHORTCUTS.items()})}
    return f'{head}{body}<script nonce="{esc(nonce)}">{script}</script></body></html>'


def _item_body(opened: Opened, header: str) -> str:
    ready, product, item = opened.item.ready, opened.product, opened.item
    video_url, poster_url = safe_url(ready.video_url), safe_url(ready.poster_url)
    photo_url = safe_url(product.image_url)
    video = (f'<video id="video" src="{esc(video_url)}"' + (f' poster="{esc(poster_url)}"' if poster_url else "")
             + ' controls autoplay muted loop playsinline preload="auto"></video>') if video_url else (
        f'<p id="video-missing">The video is not reachable from a browser: {esc(ready.video_url)}</p>')
    photo = (f'<img id="photo" src="{esc(photo_url)}" alt="product photo">' if photo_url else
             f'<p class="muted" id="photo">photo: {esc(product.image_url or "none")}</p>')
    points = "".join(f"<li>{esc(point)}</li>" for point in product.selling_points) or '<li class="muted">none</li>'
    scores = "".join(f"<tr><th>{esc(name)}</th><td>{value:.4g}</td></tr>"
                     for name, value in sorted(ready.quality.scores.items()))
    causes = "".join(f'<span class="tag">{esc(c.value)}</span>' for c in sorted(item.causes))
    version = f" v{item.template_version}" if item.template_version is not None else ""
    lease = datetime.fromtimestamp(opened.claim.lease_until, UTC).strftime("%H:%M:%S UTC")
    gate = "passed" if ready.quality.passed else "below the gate (published flagged)"
    meta = (
        f'<table class="meta"><tr><th>SKU</th><td id="sku">{esc(ready.sku)}</td></tr>'
        f'<tr><th>variant</th><td id="variant">{esc(ready.variant_id)}</td></tr>'
        f'<tr><th>template</th><td id="template">{esc(ready.template_id)}{esc(version)}</td></tr>'
        f'<tr><th>style</th><td id="style">{esc(opened.style or "?")}</td></tr>'
        f'<tr><th>model</th><td>{esc(ready.provenance.model)} · seed {esc(ready.provenance.seed)}</td></tr>'
        f'<tr><th>quality</th><td>{esc(gate)}, {esc(ready.quality.attempts)} attempt(s)</td></tr>'
        f'<tr><th>why queued</th><td id="causes">{causes}</td></tr>'
        f'<tr><th>yours until</th><td>{esc(lease)}</td></tr></table>'
    )
    buttons = ['<button class="approve" data-verdict="approved" id="approve"><kbd>A</kbd> Approve</button>']
    buttons += [f'<button class="reject" data-verdict="rejected" data-reason="{esc(reason.value)}" '
                f'id="reject-{esc(reason.value)}"><kbd>{n}</kbd> {esc(label)}</button>'
                for n, (reason, label) in enumerate(REASON_LABELS.items(), start=1)]
    return (
        f'<body data-request-key="{esc(ready.request_key)}" data-claim-id="{esc(opened.claim.claim_id)}" '
        f'data-sku="{esc(ready.sku)}">{header}<main>'
        f'<section>{video}{meta}<h3>Quality scores</h3><table class="scores">{scores}</table></section>'
        f'<section class="card">{photo}<h2 id="title">{esc(product.title)}</h2>'
        f'<p class="muted"><span id="brand">{esc(product.brand or "")}</span> · '
        f'<span id="category">{esc(product.category or item.category or "")}</span></p>'
        f'<ul id="points">{points}</ul><h3>Prompt</h3><p class="prompt" id="prompt">{esc(ready.prompt)}</p></section>'
        f'</main><footer>{"".join(buttons)}'
        '<textarea id="note" maxlength="500" placeholder="note (N; Ctrl+Enter sends as other)"></textarea>'
        '<span id="status" role="status"></span><span class="muted">Space play/pause · R replay</span></footer>'
    )


def _json_object(mapping: dict[str, str]) -> str:
    """A JS object literal of plain ASCII keys and values (reason codes)."""
    return "{" + ",".join(f'"{k}":"{v}"' for k, v in mapping.items()) + "}"
