"""The leaderboard's Streamlit entry point (`awm ui` runs `streamlit run` on this file).

Routes on the URL (`?view=...`, `awm_platform.ui.views.state`): leaderboard, checkpoint, compare,
gallery, sweeps. Every page reads through `awm_platform.ui.data` (SQL on the platform store),
cached until the store's change marker moves.
"""

from __future__ import annotations

import streamlit as st

from awm_platform.redaction import redact_text, redact_url
from awm_platform.store import StoreError
from awm_platform.ui import data
from awm_platform.ui.views import checkpoint, common, compare, gallery, leaderboard, state, sweeps

PAGES = {"leaderboard": leaderboard.render, "checkpoint": checkpoint.render, "compare": compare.render,
         "gallery": gallery.render, "sweeps": sweeps.render}
TITLES = {"leaderboard": "Leaderboard", "checkpoint": "Checkpoint", "compare": "Compare", "gallery": "Gallery",
          "sweeps": "Sweeps"}


def main() -> None:
    st.set_page_config(page_title="AWM leaderboard", layout="wide")
    url, tracking_uri, extra_roots = common.settings()
    st.sidebar.markdown(" · ".join(f"[{TITLES[v]}]({state.url(v)})" for v in ("leaderboard", "sweeps")))
    st.sidebar.caption(f"store: {redact_url(url)}")
    try:
        page = state.parse(st.query_params.to_dict())
    except state.StateError as exc:
        st.error(f"bad link: {exc}")
        return
    try:
        store = common.open_store(url)
        marker = data.change_marker(store)
    except StoreError as exc:  # its message names the store by its redacted URL
        st.error(f"cannot reach the platform store: {redact_text(str(exc))[0]}")
        st.caption("Start the database (`bash scripts/services.sh up postgres` for the test server) or pass "
                   "`awm ui --db URL`.")
        return
    except Exception as exc:  # noqa: BLE001 - a server that went away: say so, redacted, instead of a trace
        st.error(f"cannot reach the platform store {redact_url(url)}: {redact_text(type(exc).__name__)[0]}")
        return
    ctx = common.Ctx(store=store, url=url, tracking_uri=tracking_uri, extra_roots=extra_roots, marker=marker,
                     page=page)
    PAGES[page.view](ctx)


main()
