// The overview's figures, fetched again every few seconds and swapped in place: no reload,
// no build step. A failed fetch (the console restarting, a login that ran out) says so.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (!live) return;
  const every = 1000 * Number(live.dataset.every || 3);
  async function refresh() {
    try {
      const answer = await fetch(live.dataset.src, {credentials: "same-origin",
                                                     headers: {"Accept": "text/html"}});
      if (answer.redirected || answer.status === 401) {
        window.location.reload();  // the login ran out: the console sends us to log in
        return;
      }
      if (!answer.ok) throw new Error(`${answer.status} ${answer.statusText}`);
      live.innerHTML = await answer.text();
      live.classList.remove("stale");
      live.dataset.refreshed = String(Date.now());
    } catch (error) {
      live.classList.add("stale");
      live.title = `not refreshed: ${error.message}`;
    } finally {
      setTimeout(refresh, every);
    }
  }
  setTimeout(refresh, every);
});
