// Helpers shared by the UI pages. Served at /ui/common.js and loaded before each page's
// own script; classic scripts share one global scope, so pages use these names directly.
"use strict";

// A token given once as ?token=... is kept in localStorage for later visits.
const token = (() => {
  const t = new URLSearchParams(location.search).get("token");
  if (t) localStorage.setItem("magpie-token", t);
  return localStorage.getItem("magpie-token") || "";
})();

const $ = (id) => document.getElementById(id);

// Shows `msg` in the page's #error box, or hides the box when `msg` is empty.
function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.style.display = msg ? "block" : "none";
}

// POSTs `body` as JSON to the REST API; the reply's `data`, or an Error carrying the
// server's message.
async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  let j;
  try { j = await r.json(); } catch (_) { throw new Error(`HTTP ${r.status}`); }
  if (!r.ok || j.code !== 0) throw new Error(j.message || `HTTP ${r.status}`);
  return j.data;
}

// The URL of an indexed image's file (`kind` "file") or thumbnail ("thumb").
function imageUrl(coll, id, kind) {
  return `/images/${encodeURIComponent(coll)}/${id}/${kind}` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

// A byte count as KB or MB.
function fmtSize(n) {
  return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(n / 1024)) + " KB";
}
