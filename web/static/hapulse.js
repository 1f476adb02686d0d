// hapulse dashboard: live updates. Pages work without this script; with it, the server-sent
// event stream says which cluster changed and the page re-fetches its own fragment (?partial=1).
(() => {
  "use strict";
  const root = document.getElementById("live");
  if (!root || !window.EventSource || !window.fetch) return;
  const scope = root.dataset.scope || "*";
  let inflight = false, again = false, skewMs = 0;

  // Heartbeat ages tick every second, against the server's clock (data-now) rather than the
  // browser's, so a skewed laptop clock does not show wrong ages.
  function measureSkew() {
    const holder = root.querySelector("[data-now]");
    if (holder) skewMs = Date.now() - Date.parse(holder.dataset.now);
  }
  function format(ms) {
    ms = Math.max(0, ms);
    if (ms < 10000) return (ms / 1000).toFixed(1) + " s";
    if (ms < 120000) return Math.floor(ms / 1000) + " s";
    if (ms < 7200000) return Math.floor(ms / 60000) + " min";
    return Math.floor(ms / 3600000) + " h";
  }
  function tick() {
    const now = Date.now() - skewMs;
    root.querySelectorAll("[data-since]").forEach((el) => {
      el.textContent = format(now - Date.parse(el.dataset.since));
    });
  }

  // Someone filling in a form on the page: leave the page alone until they are done.
  function editing() {
    const el = document.activeElement;
    if (root.querySelector("details[open] form")) return true; // an action form opened
    return el && root.contains(el) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(el.tagName);
  }

  async function refresh() {
    if (editing()) return;
    if (inflight) { again = true; return; }
    inflight = true;
    try {
      const url = new URL(location.href);
      url.searchParams.set("partial", "1");
      const response = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (response.ok) {
        root.innerHTML = await response.text();
        measureSkew();
        tick();
      }
    } catch (_) {
      // The stream's error handler shows the connection state.
    } finally {
      inflight = false;
      if (again) { again = false; refresh(); }
    }
  }

  if (scope === "none") return; // a page that is not live (a form to confirm)
  const stream = new EventSource("/ui/stream");
  stream.addEventListener("change", (e) => {
    if (scope === "*" || e.data === scope || e.data === "*") refresh();
  });
  stream.onopen = () => {
    document.body.classList.remove("offline");
    document.body.classList.add("online");
    refresh(); // catch up on what changed while disconnected
  };
  stream.onerror = () => {
    document.body.classList.remove("online");
    document.body.classList.add("offline");
  };
  // Pages whose fragment asks for it (charts of lag and heartbeats) also refresh on a timer:
  // samples change every heartbeat without being a state change worth an event.
  function scheduleRefresh() {
    const holder = root.querySelector("[data-refresh]");
    const every = holder ? parseInt(holder.dataset.refresh, 10) : 0;
    if (every > 0) setTimeout(() => { refresh().finally(scheduleRefresh); }, every);
  }
  measureSkew();
  scheduleRefresh();
  setInterval(tick, 1000);
})();
