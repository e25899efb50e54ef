// certfleet console: the only script (served from the console's own origin, no inline code).
// It keeps the live numbers of the overview current without reloading the page.
"use strict";
(function () {
  const live = document.querySelectorAll("[data-live]");
  if (live.length === 0) return;
  async function refresh() {
    try {
      const answer = await fetch("/api/live", { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401) { window.location.assign("/signin"); return; }
      if (!answer.ok) return;
      const data = await answer.json();
      for (const element of live) {
        const value = data[element.dataset.live];
        if (typeof value === "number") element.textContent = String(value);
      }
    } catch (_) {
      // The server is away for a moment: try again at the next tick.
    }
  }
  window.setInterval(refresh, 3000);
})();
