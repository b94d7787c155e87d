"""medft clinician review: the prediction next to the ground truth, a grade and a comment per case.

Run: medft review EVAL_DIR [--port P] [--users FILE] [--db URL]
 or: streamlit run apps/review.py -- --eval-dir EVAL_DIR [--users FILE] [--db URL]

Layout only: the logic lives in medft.review (cases, volumes, store, auth, app_support) and
medft.slices. Cases are chosen by case_id from the evaluation folder's table, never by a path.
"""
from __future__ import annotations

import importlib.util
import math
import threading
from datetime import timezone

import streamlit as st

from medft.errors import MedftError
from medft.evaluate.hidden_paths import hide_paths
from medft.formats.evaluation import CaseStatus
from medft.review import app_support as support
from medft.review.cases import REVIEW_FILTERS, SORT_LABELS, SORTS, CaseEntry, CaseTable, format_score
from medft.slices import PLANES, SLICE_DIRECTION

MEAN_OF_CLASSES = "mean"
ALL_SITES = "all sites"
VIEW_TITLES = {"truth": "Ground truth", "prediction": "Prediction", "difference": "Difference", "image": "Image"}
EVALUATION_REPLACED = ("The evaluation in this folder changed while the app was running, so this page shows and saves "
                       "nothing more (a grade submitted since was not saved). Fix: restart medft review.")
REMOVED_REVIEWER = "You were logged out: your account is no longer on this evaluation's list of reviewers."

st.set_page_config(page_title="medft review", page_icon=":material/radiology:", layout="wide",
                   initial_sidebar_state="expanded")
st.set_option("client.showErrorDetails", "none")  # no traceback in the browser, whatever the command line said


# --------------------------------------------------------------------------------------------
# Shared resources (one per server process)
# --------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def case_table(eval_dir: str) -> CaseTable:
    return CaseTable.from_eval_dir(eval_dir)


@st.cache_resource(show_spinner=False)
def review_store(eval_dir: str, db: str | None):
    """The reviews of this evaluation only (its evaluation_id, from evaluation.json), in the
    folder's reviews.sqlite or in the shared database ``db``."""
    from medft.review.store import ReviewStore

    return ReviewStore.for_eval_dir(eval_dir, db)


@st.cache_resource(show_spinner=False)
def login_throttle():
    from medft.review.auth import LoginThrottle

    return LoginThrottle()


@st.cache_resource(show_spinner="Loading the case\u2026", max_entries=12)
def case_volumes(eval_dir: str, case_id: str):
    warm_up().join(timeout=300)  # never import torch in two threads at once
    from medft.review.volumes import load_case

    return load_case(case_table(eval_dir), case_id)


# --------------------------------------------------------------------------------------------
# Logging in
# --------------------------------------------------------------------------------------------
def oidc_configured() -> bool:
    """Single sign-on through st.login: only when the app's secrets hold an [auth] section."""
    try:
        configured = "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False
    return configured and importlib.util.find_spec("authlib") is not None


def oidc_reviewer() -> str | None:
    if not oidc_configured() or not st.user.get("is_logged_in"):
        return None
    email = st.user.get("email")
    if not isinstance(email, str) or not email:
        return None
    try:
        allowed = st.secrets.get("medft_review", {}).get("allowed_emails")
    except Exception:
        allowed = None
    if allowed is not None and email.lower() not in {str(a).lower() for a in allowed}:
        return None
    return email


def current_reviewer(config: support.AppConfig) -> str | None:
    """The signed-in reviewer; a password reviewer no longer in the users file is logged out."""
    username = st.session_state.get("reviewer")
    if not username:
        return oidc_reviewer()
    from medft.review.auth import list_users

    if username not in list_users(config.users):  # removed while signed in: no grade from them
        log_out()
        st.session_state["login_notice"] = REMOVED_REVIEWER
        return None
    return username


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Import the image stack (torch, MONAI) while the reviewer types: the first case opens sooner."""
    def work() -> None:
        for module in ("medft.data.loading", "medft.review.volumes"):
            importlib.import_module(module)

    thread = threading.Thread(target=work, name="medft-review-warm-up", daemon=True)
    thread.start()
    return thread


def login_page(config: support.AppConfig) -> None:
    warm_up()
    _, middle, _ = st.columns([1, 1.1, 1])
    with middle:
        st.title("Clinician review")
        st.caption("medft \u00b7 grade the model's segmentations against the ground truth")
        notice = st.session_state.pop("login_notice", None)
        if notice:
            st.warning(notice)
        if oidc_configured():
            if st.user.get("is_logged_in"):
                st.error("Your single sign-on account is not on this evaluation's list of reviewers.")
                st.button("Log out", on_click=log_out_sso)
            else:
                st.button("Log in with single sign-on", on_click=st.login, type="primary", width="stretch")
            st.caption("or with a medft reviewer account:")
        with st.form("login"):
            username = st.text_input("Username", key="login_username", autocomplete="username")
            password = st.text_input("Password", type="password", key="login_password",
                                     autocomplete="current-password")
            submitted = st.form_submit_button("Log in", type="primary", width="stretch")
        if submitted:
            ok, message = support.password_login(config.users, login_throttle(), username, password)
            if ok:
                from medft.review.auth import display_name

                st.session_state["reviewer"] = username.strip()
                st.session_state["reviewer_name"] = display_name(config.users, username.strip())
                st.rerun()
            st.error(message)


def log_out() -> None:
    """Forget all of this reviewer's session (case, viewer settings, drafts, messages) and the case
    in the address: whoever signs in next on this tab starts afresh."""
    st.session_state.clear()
    st.query_params.pop("case", None)


def log_out_sso() -> None:
    log_out()
    st.logout()


# --------------------------------------------------------------------------------------------
# Callbacks (run before the rerun they cause)
# --------------------------------------------------------------------------------------------
def go_to(case_id: str | None) -> None:
    if case_id:
        st.session_state["case_id"] = case_id
        st.session_state.pop("flash", None)


def on_pick() -> None:
    go_to(st.session_state.get("case_pick"))


def set_state(key: str, value) -> None:
    st.session_state[key] = value


def on_window_choice(auto: tuple[float, float]) -> None:
    width, level = support.window_for(st.session_state["window_choice"], auto, st.session_state.get("manual_window"))
    st.session_state["window_width"], st.session_state["window_level"] = float(width), float(level)


def on_manual_window() -> None:
    st.session_state["window_choice"] = "Manual"
    st.session_state["manual_window"] = (st.session_state["window_width"], st.session_state["window_level"])


# --------------------------------------------------------------------------------------------
# The sidebar: who, progress, filters, the case list
# --------------------------------------------------------------------------------------------
def sidebar(config: support.AppConfig, table: CaseTable, store, reviewer: str, mine: dict) -> list[CaseEntry]:
    with st.sidebar:
        st.markdown(f"#### {table.model_name or 'medft'} \u00b7 review")
        who, out = st.columns([3, 1.3], vertical_alignment="center")
        who.caption(f"Signed in as **{st.session_state.get('reviewer_name') or reviewer}**")
        if st.session_state.get("reviewer"):
            out.button("Log out", on_click=log_out, key="logout", type="tertiary")
        else:
            out.button("Log out", on_click=log_out_sso, key="logout", type="tertiary")
        progress = table.progress(mine)
        st.progress(progress.fraction, text=str(progress))

        sort_col, class_col = st.columns(2)
        sort = sort_col.selectbox("Order", SORTS, format_func=SORT_LABELS.get, key="sort")
        by = class_col.selectbox("Dice of", [MEAN_OF_CLASSES, *table.foreground], key="by_class")
        site_col, show_col = st.columns(2)
        site = site_col.selectbox("Site", [ALL_SITES, *table.sites], key="site", disabled=not table.sites)
        review = show_col.selectbox("Show", REVIEW_FILTERS, key="review_filter",
                                    format_func=lambda f: "all cases" if f == "all" else f)
        order = table.select(sort=sort, by_class=None if by == MEAN_OF_CLASSES else by,
                             site=None if site == ALL_SITES else site, review=review, reviewed=mine)

        ids = [e.case_id for e in order]
        current = st.session_state.get("case_id")
        st.session_state["case_pick"] = current if current in ids else None

        def score_of(e: CaseEntry) -> float | None:
            return e.score(None if by == MEAN_OF_CLASSES else by)

        def caption(e: CaseEntry) -> str:
            parts = [f"Dice {format_score(score_of(e))}" if e.viewable else str(e.status)]
            if e.site:
                parts.append(e.site)
            if e.case_id in mine:
                parts.append(f"graded {mine[e.case_id].grade}")
            elif e.status is CaseStatus.PREDICTION_ONLY:
                parts.append("no ground truth")
            return " \u00b7 ".join(parts)

        with st.container(height=380, border=True):
            if ids:
                st.radio("Cases", ids, index=None, key="case_pick", on_change=on_pick, label_visibility="collapsed",
                         format_func=lambda cid: f"\u2714 {cid}" if cid in mine else cid,
                         captions=[caption(e) for e in order])
            else:
                st.caption("No case matches these filters.")
        st.caption(f"{len(ids)} of {len(table)} cases shown")
        st.download_button("Download all reviews (CSV)", data=lambda: support.reviews_csv(store),
                           file_name="reviews.csv", mime="text/csv", on_click="ignore", icon=":material/download:",
                           width="stretch")
    return order


# --------------------------------------------------------------------------------------------
# The viewer (a fragment: moving the slider reruns only this)
# --------------------------------------------------------------------------------------------
@st.fragment
def viewer(eval_dir: str, case_id: str) -> None:
    try:
        draw_viewer(eval_dir, case_id)
    except Exception as exc:
        st.error(support.user_message(exc, support.configured_paths()))


def draw_viewer(eval_dir: str, case_id: str) -> None:
    case = case_volumes(eval_dir, case_id)
    state = st.session_state
    if state.get("viewer_case") != case_id:  # a new case: the automatic window follows it
        state["viewer_case"] = case_id
        if "window_choice" not in state:
            state["window_choice"] = support.first_window_choice(case.looks_like_ct)
        width, level = support.window_for(state["window_choice"], case.auto_window, state.get("manual_window"))
        state["window_width"], state["window_level"] = float(width), float(level)

    plane_col, slider_col, error_col, label_col = st.columns([2.7, 3.7, 1.3, 1.3], vertical_alignment="bottom")
    plane = plane_col.segmented_control("Plane", PLANES, key="plane", default="axial", format_func=str.title) or "axial"
    count = case.slice_count(plane)
    has_both = "difference" in case.views
    slice_key = f"slice_{case_id}_{plane}"  # slice numbers on screen count from 1
    if slice_key not in state or not 1 <= state[slice_key] <= count:
        state[slice_key] = 1 + case.best_slice(plane, "error" if has_both else "label")
    error_col.button("Most error", on_click=set_state, args=(slice_key, 1 + case.best_slice(plane, "error")),
                     disabled=not has_both, width="stretch", help="Go to the slice where prediction and ground truth "
                     "disagree the most", key="jump_error")
    label_col.button("Most label", on_click=set_state, args=(slice_key, 1 + case.best_slice(plane, "label")),
                     width="stretch", help="Go to the slice with the most labelled voxels", key="jump_label")
    index = slider_col.slider(f"Slice (1\u2013{count}, {SLICE_DIRECTION[plane]})", 1, count, key=slice_key) - 1

    window = (float(state["window_width"]), float(state["window_level"]))
    opacity = float(state.get("opacity", 0.4))
    mode = state.get("overlay_mode") or "filled"
    views = support.viewer_views(case.views)
    for column, view in zip(st.columns(len(views), gap="small"), views, strict=True):
        png = support.panel_png(case, plane, index, view, window, opacity=opacity, mode=mode)
        column.markdown(f"**{VIEW_TITLES[view]}**")
        column.image(png, output_format="PNG", width="stretch")
    st.html(support.legend_html(case.class_names, difference=has_both))

    with st.container(border=True):
        choice_col, width_col, level_col, opacity_col, mode_col = st.columns([2.4, 1.1, 1.1, 1.6, 1.6])
        choice_col.selectbox("Window", support.window_choices(), key="window_choice", on_change=on_window_choice,
                             args=(case.auto_window,))
        step = _nice_step(case.auto_window[0])
        width_col.number_input("Width", min_value=step, step=step, key="window_width", on_change=on_manual_window)
        level_col.number_input("Level", step=step, key="window_level", on_change=on_manual_window)
        opacity_col.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key="opacity")
        mode_col.segmented_control("Overlay", ["filled", "contour"], key="overlay_mode", default="filled",
                                   format_func=str.title)
    times = " \u00d7 "
    spacing = times.join(f"{s:.2g}" for s in case.spacing)
    shape = times.join(str(n) for n in case.shape)
    st.caption(f"{plane.title()} slice {index + 1} of {count} \u00b7 {shape} voxels of {spacing} mm "
               f"\u00b7 window {window[0]:.4g} / {window[1]:.4g}")


def _nice_step(width: float) -> float:
    """A power of ten near a hundredth of the window width: about 100 steps across it."""
    return float(10 ** math.floor(math.log10(max(float(width) / 100.0, 1e-6))))


# --------------------------------------------------------------------------------------------
# The review form and the case's numbers
# --------------------------------------------------------------------------------------------
def fill_form(case_id: str, current) -> None:
    """Put the reviewer's current review of the case (``current``, from the store) into the form
    when it opens, and again when the stored review changed (saved here or in another tab); a
    draft typed since is kept otherwise, and what is being submitted is never replaced."""
    state = st.session_state
    if state.get(f"submit_{case_id}"):
        return
    filled = state.setdefault("form_filled_from", {})
    review_id = current.id if current else None
    if f"grade_{case_id}" not in state or filled.get(case_id) != review_id:
        state[f"grade_{case_id}"] = current.grade if current else None
        state[f"comment_{case_id}"] = current.comment if current else ""
        filled[case_id] = review_id


def review_panel(store, entry: CaseEntry, reviewer: str, current) -> None:
    from medft.review.store import GRADES

    st.markdown("**Your review**")
    flash = st.session_state.pop("flash", None)  # shown once, right after the save
    if flash and flash[0] == entry.case_id:
        st.success(flash[1], icon=":material/check_circle:")
    elif current is not None:
        when = current.reviewed_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        st.info(f"Your current grade: **{current.grade} \u00b7 {current.grade_label}** ({when})")
    fill_form(entry.case_id, current)
    with st.form(f"review_{entry.case_id}", border=False):
        grade = st.radio("Grade", list(GRADES), index=None, key=f"grade_{entry.case_id}",
                         format_func=lambda g: f"{g} \u00b7 {GRADES[g]}")
        comment = st.text_area("Comment", key=f"comment_{entry.case_id}", height=110,
                               placeholder="What is wrong, where? (optional)")
        submitted = st.form_submit_button("Submit grade", type="primary", width="stretch",
                                          key=f"submit_{entry.case_id}")
    if submitted:
        if grade is None:
            st.warning("Choose a grade first.")
            return
        try:
            review = store.submit(entry.case_id, reviewer, int(grade), comment or "")
        except MedftError as exc:  # not saved: the form keeps what was typed
            st.error(support.user_message(exc, support.configured_paths()))
            return
        st.session_state["flash"] = (entry.case_id, f"Saved: grade {review.grade} \u00b7 {review.grade_label} "
                                                     f"for {entry.case_id}.")
        st.rerun()


def metrics_table(entry: CaseEntry) -> None:
    st.markdown("**Metrics**")
    if not entry.scored:
        st.caption("No ground truth: no metrics." if entry.status is CaseStatus.PREDICTION_ONLY else "No metrics.")
        return
    rows = [{"class": r["class"], "Dice": format_score(r["dice"]), "sens.": format_score(r["sensitivity"]),
             "spec.": format_score(r["specificity"], 4)} for r in entry.metrics_rows()]
    rows.append({"class": "mean", "Dice": format_score(entry.mean_dice), "sens.": "", "spec.": ""})
    st.dataframe(rows, hide_index=True, width="stretch")


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------
def review_page(config: support.AppConfig, table: CaseTable, reviewer: str) -> None:
    store = review_store(str(config.eval_dir), config.db)
    mine = store.current(reviewer)

    state = st.session_state
    if not table.entries:
        sidebar(config, table, store, reviewer, mine)  # signed in: the way out too
        st.info("This evaluation has no cases to review.")
        return
    if "case_id" not in state:  # first visit: a case named in the URL, else the worst one
        wanted = st.query_params.get("case")
        if wanted is not None and wanted not in table:
            st.warning("That link names a case that is not in this evaluation; showing the worst case instead.")
            wanted = None
        state["case_id"] = wanted or next((e.case_id for e in table.select() if e.viewable), table.case_ids[0])
    order = sidebar(config, table, store, reviewer, mine)
    case_id = state["case_id"]
    entry = table.get(case_id)
    st.query_params["case"] = case_id

    reference = table.select(sort=state.get("sort", "worst"),
                             by_class=None if state.get("by_class", MEAN_OF_CLASSES) == MEAN_OF_CLASSES
                             else state["by_class"])
    previous_id, next_id = table.neighbours(order, case_id, reference)
    title_col, prev_col, next_col = st.columns([6, 1, 1], vertical_alignment="center")
    with title_col:
        st.markdown(f"### {case_id}")
        facts = [f"site {entry.site}" if entry.site else None,
                 f"mean Dice {format_score(entry.mean_dice)}" if entry.scored else None,
                 {CaseStatus.PREDICTION_ONLY: "no ground truth", CaseStatus.FAILED: "evaluation failed"}.get(entry.status)]
        st.caption(" \u00b7 ".join(f for f in facts if f))
    prev_col.button("Previous", icon=":material/chevron_left:", on_click=go_to, args=(previous_id,),
                    disabled=previous_id is None, width="stretch", key="previous_case")
    next_col.button("Next", icon=":material/chevron_right:", icon_position="right", on_click=go_to, args=(next_id,),
                    disabled=next_id is None, width="stretch", key="next_case")

    if not entry.viewable:
        files = table.files(case_id)
        st.warning("This case could not be evaluated, so there is nothing to review. "
                   + hide_paths(entry.message or "", [*files.image, files.label]))
        return
    try:
        case_volumes(str(config.eval_dir), case_id)  # cached: the viewer draws from it
    except Exception as exc:
        st.error(support.user_message(exc, config.paths))
        return
    view_col, side_col = st.columns([3.3, 1], gap="medium")
    with view_col:
        viewer(str(config.eval_dir), case_id)
    with side_col:
        review_panel(store, entry, reviewer, mine.get(case_id))
        metrics_table(entry)


def main() -> None:
    st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.2rem;padding-bottom:1rem}"
            "[data-testid='stSidebarUserContent']{padding-top:1rem}</style>")
    config = support.parse_app_args()
    table = case_table(str(config.eval_dir))
    if table.replaced(config.eval_dir):  # moved away, another put in its place: grades must not cross over
        st.error(EVALUATION_REPLACED)
        return
    reviewer = current_reviewer(config)
    if reviewer is None:
        login_page(config)
    else:
        review_page(config, table, reviewer)


try:
    main()
except Exception as exc:
    st.error(support.user_message(exc, support.configured_paths()))
