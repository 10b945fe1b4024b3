// The live stream: asks the console for requests newer than the last one shown, every few
// seconds, and puts their rows on top (a changed request moves up). Without JavaScript the page
// still works; it just needs a reload. No framework, no CDN.
"use strict";
(function () {
  const table = document.getElementById("live");
  if (!table) return;
  const body = table.tBodies[0];
  const status = document.getElementById("live-status");
  let cursor = table.dataset.cursor;
  const feed = table.dataset.feed;
  async function poll() {
    try {
      const response = await fetch(feed + "?since=" + encodeURIComponent(cursor), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (response.ok) {
        const data = await response.json();
        if (data.count > 0) {
          for (const id of data.ids) {
            const old = document.getElementById("row-" + id);
            if (old) old.remove();
          }
          const holder = document.createElement("tbody");
          holder.innerHTML = data.rows; // rendered and escaped by the server's templates
          const rows = Array.from(holder.rows);
          for (const row of rows.reverse()) {
            row.classList.add("new-row");
            body.insertBefore(row, body.firstChild);
          }
          status.textContent = data.count + " new or changed request(s) at " + new Date().toLocaleTimeString() + ".";
        }
        cursor = data.cursor;
      } else if (response.status === 401 || response.redirected) {
        status.textContent = "Your session has ended: log in again to keep the stream going.";
        return;
      }
    } catch (error) {
      status.textContent = "The console is not answering; retrying.";
    }
    window.setTimeout(poll, 2000);
  }
  window.setTimeout(poll, 2000);
})();
