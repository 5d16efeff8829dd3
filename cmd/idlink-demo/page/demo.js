// idlink demo page: plain JS, no build step. Every call is same-origin, so
// the browser sends idlink's cookies; the page never sees their values.
"use strict";

const $ = (id) => document.getElementById(id);

function show(id, status, body) {
  const el = $(id);
  el.textContent = status + "\n" + body;
  el.className = status.startsWith("2") ? "ok" : "err";
}

async function call(method, path, opts = {}) {
  const resp = await fetch(path, { method, credentials: "same-origin", ...opts });
  return { status: resp.status + " " + resp.statusText, ok: resp.ok, text: await resp.text() };
}

// The demo backend's login: it answers the signed external id.
async function signIn() {
  const r = await call("POST", "/backend/login", {
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: $("name").value, password: $("password").value }),
  });
  if (!r.ok) {
    if (r.status.startsWith("502")) r.text = "the demo backend is not running: start the demo with `go run ./cmd/idlink-demo`";
    return { error: r };
  }
  return { signed: JSON.parse(r.text) };
}

function sessionHeaders(signed) {
  return { "X-External-Id": signed.external_id, "X-External-Id-Signature": signed.signature };
}

$("install").onclick = async () => {
  const r = await call("POST", "/idlink/installs");
  show("install-out", r.status, r.text);
};

$("login").onclick = async () => {
  const { signed, error } = await signIn();
  if (error) return show("login-out", error.status, error.text);
  // The install cookie (if any) goes along: idlink links it to the user.
  const r = await call("POST", "/idlink/sessions", { headers: sessionHeaders(signed) });
  show("login-out", r.status, r.text);
};

$("call").onclick = async () => {
  const r = await call("GET", "/app/");
  $("call-status").textContent = r.status;
  const header = (name) => {
    const m = r.text.match(new RegExp("^" + name + ": (.*)$", "m"));
    return m ? m[1].trim() : "";
  };
  $("user-id").textContent = r.ok ? header("X-Platform-User-Id") || "(anonymous)" : "";
  $("source").textContent = r.ok ? header("X-Identity-Source") || "(none)" : "";
  show("call-out", r.status, r.text);
};

// Another device: the same login without this browser's cookies
// (credentials "omit"), so its session does not replace this one's cookie.
$("other").onclick = async () => {
  const { signed, error } = await signIn();
  if (error) return show("other-out", error.status, error.text);
  const r = await call("POST", "/idlink/sessions", { headers: sessionHeaders(signed), credentials: "omit" });
  show("other-out", r.status, r.text);
};

$("logout").onclick = async () => {
  const r = await call("DELETE", "/idlink/sessions/current");
  show("logout-out", r.status, r.text);
};

$("origin").textContent = location.origin;
const sibling = location.hostname.startsWith("www.")
  ? location.origin.replace("//www.", "//app.")
  : location.origin.replace("//app.", "//www.");
$("sibling").textContent = sibling;
$("sibling").href = sibling + "/";
