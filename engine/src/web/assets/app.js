// Slipway's dashboard: the live parts. Everything else works without this file.
"use strict";

// A fresh copy of this page, parsed, to take parts of it.
async function freshCopy(url, fragment) {
  const headers = fragment ? { "X-Slipway-Fragment": fragment } : {};
  const response = await fetch(url, { headers, credentials: "same-origin" });
  if (!response.ok) return null;
  return new DOMParser().parseFromString(await response.text(), "text/html");
}

// The job list: its counts and rows again whenever a job changes (selections kept).
function liveList(live) {
  const source = new EventSource(live.dataset.live);
  source.addEventListener("changed", async () => {
    const checked = new Set([...live.querySelectorAll("input[name=ids]:checked")].map((box) => box.value));
    const copy = await freshCopy(live.dataset.fragment, "rows");
    if (!copy) return;
    live.replaceChildren(...copy.body.childNodes);
    live.querySelectorAll("input[name=ids]").forEach((box) => { box.checked = checked.has(box.value); });
  });
  source.addEventListener("error", () => { if (source.readyState === EventSource.CLOSED) source.close(); });
}

// A job: its new log lines as they are stored, a header per step, following the
// end of the log unless paused; its state, facts, timeline and history again when
// its own stream says something happened (at most every 2 s) and at its end.
function liveJob(log) {
  const follow = document.getElementById("follow");
  let following = true;
  if (follow) {
    follow.hidden = false;
    follow.addEventListener("click", () => {
      following = !following;
      follow.textContent = following ? "Pause" : "Follow";
    });
  }
  const last = () => log.querySelector(".line:last-of-type");
  if (log.dataset.ended !== "true") {
    const source = new EventSource(log.dataset.live);
    source.addEventListener("line", (event) => {
      const holder = document.createElement("div");
      holder.innerHTML = event.data;
      const line = holder.firstElementChild;
      if (!line) return;
      const previous = last();
      if (!previous || previous.dataset.attempt !== line.dataset.attempt || previous.dataset.step !== line.dataset.step) {
        const header = document.createElement("h3");
        header.className = "step";
        header.textContent = `attempt ${line.dataset.attempt} · ${line.dataset.step}`;
        log.append(header);
      }
      log.append(line);
      if (following) line.scrollIntoView({ block: "end" });
      refreshSoon();
    });
    source.addEventListener("end", () => { source.close(); refreshJob(); });
    source.addEventListener("shutdown", () => source.close());
  }
}

let refreshPending = false;
function refreshSoon() {
  if (refreshPending) return;
  refreshPending = true;
  setTimeout(() => { refreshPending = false; refreshJob(); }, 2000);
}

async function refreshJob() {
  const copy = await freshCopy(location.href);
  if (!copy) return;
  for (const selector of ["#job-state", ".job-head .buttons", ".problem", "dl.facts", "svg.timeline", "table.events"]) {
    const mine = document.querySelector(selector);
    const theirs = copy.querySelector(selector);
    // Only what changed is swapped: a button being pressed stays the same button.
    if (mine && theirs && mine.outerHTML !== theirs.outerHTML) mine.replaceWith(theirs);
    else if (!mine && theirs && selector === ".problem") document.querySelector("dl.facts")?.before(theirs);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.live) liveList(live);
  const log = document.getElementById("log");
  if (log && log.dataset.live) liveJob(log);
});
