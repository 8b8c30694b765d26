// Cairn dashboard: live numbers on the swarm page, and "… ago" times that keep ticking.
// Loaded as a file (the CSP allows no inline script); builds DOM with textContent only, never HTML.
"use strict";
(function () {
  const POLL_MS = 5000;
  let clockOffset = 0; // server time minus browser time, seconds

  function number(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return "—";
    return Number(value).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    let s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return m + "m " + String(s).padStart(2, "0") + "s";
    let h = Math.floor(m / 60); m %= 60;
    if (h < 48) return h + "h " + String(m).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }
  function now() { return Date.now() / 1000 + clockOffset; }

  function tickAgo() {
    document.querySelectorAll("[data-ago]").forEach(function (el) {
      const at = parseFloat(el.dataset.ago);
      if (isFinite(at)) el.textContent = duration(now() - at) + " ago";
    });
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function renderPeers(peers) {
    const body = document.getElementById("peers-body");
    if (!body) return;
    const rows = [];
    peers.forEach(function (peer) {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      const link = document.createElement("a");
      link.href = "/contributors/" + encodeURIComponent(peer.public_id);
      link.textContent = peer.display_name;
      name.appendChild(link);
      if (peer.collapsed) {
        const badge = document.createElement("span");
        badge.className = "badge bad";
        badge.title = "its loss is stuck at chance: the encoder maps everything alike";
        badge.textContent = "collapsed";
        name.appendChild(document.createTextNode(" "));
        name.appendChild(badge);
      }
      tr.appendChild(name);
      cell(tr, peer.device);
      cell(tr, number(peer.samples_per_second, 1), "n");
      cell(tr, duration(peer.uptime_seconds), "n");
      cell(tr, peer.shard === null || peer.shard === undefined || peer.shard < 0 ? "—" : String(peer.shard), "n");
      const seen = cell(tr, "", "n");
      seen.dataset.ago = String(peer.last_seen);
      rows.push(tr);
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      cell(tr, "No peer is online right now.").colSpan = 6;
      rows.push(tr);
    }
    body.replaceChildren.apply(body, rows);
  }

  function setField(name, text) {
    document.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) { el.textContent = text; });
  }

  function applySwarm(data) {
    clockOffset = data.now - Date.now() / 1000;
    setField("peers_online", number(data.peers_online, 0));
    setField("global_step", number(data.global_step, 0));
    setField("samples_per_second", number(data.samples_per_second, 1));
    setField("mean_loss", number(data.mean_loss, 4));
    document.querySelectorAll('[data-field="last_allreduce_at"]').forEach(function (el) {
      if (data.last_allreduce_at === null) { delete el.dataset.ago; el.textContent = "never"; }
      else el.dataset.ago = String(data.last_allreduce_at);
    });
    renderPeers(data.peers);
    const dot = document.querySelector(".live-dot");
    if (dot) { dot.classList.toggle("idle", data.status !== "training"); dot.dataset.status = data.status; }
    tickAgo();
  }

  function poll(url) {
    const dot = document.querySelector(".live-dot");
    function once() {
      if (document.hidden) return;
      fetch(url, { headers: { "Accept": "application/json" }, cache: "no-store" })
        .then(function (response) { if (!response.ok) throw new Error(response.status); return response.json(); })
        .then(function (data) { applySwarm(data); if (dot) dot.classList.remove("stale"); })
        .catch(function () { if (dot) dot.classList.add("stale"); });
    }
    setInterval(once, POLL_MS);
    document.addEventListener("visibilitychange", once);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const main = document.querySelector("main[data-live]");
    if (main) {
      const serverNow = parseFloat(main.dataset.now);
      if (isFinite(serverNow)) clockOffset = serverNow - Date.now() / 1000;
      poll(main.dataset.live);
    }
    setInterval(tickAgo, 1000);
  });
})();
