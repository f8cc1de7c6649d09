// docchat's browser client (PROTOCOL.md): connect over the NATS websocket with an application JWT,
// open the chat of a document, keep its messages in sync from events, send messages.
import { nuid, tokenAuthenticator, wsconnect } from "@nats-io/nats-core";

const $ = (id) => document.getElementById(id);
const ENDED = new Set(["complete", "failed", "cancelled"]);
const RANK = { pending: 0, streaming: 1, complete: 2, failed: 2, cancelled: 2 };
const TIMEOUT_MS = 10_000;

// Lengths and offsets count Unicode code points, not UTF-16 units.
const cpLength = (s) => [...s].length;

const state = {
  nc: null,
  token: "", // read by the authenticator on every (re)connect: "Update token" changes it in place
  sub: "",
  uid: "",
  documentId: "",
  session: null,
  events: null, // the events subscription
  messages: new Map(), // id -> message, plus `len` (code points of content)
  refetching: new Set(), // message ids being re-read after a gap
  syncing: null, // the running catch-up, and whether another one was asked for meanwhile
  syncAgain: false,
};

// ---- identity and token -------------------------------------------------------------------------

function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

/** The subject token of a user (PROTOCOL.md, Identities). */
async function userToken(sub) {
  if (/^[A-Za-z0-9_-]{1,64}$/.test(sub) && !/^h[0-9a-f]{40}$/.test(sub)) return sub;
  if (!crypto.subtle) throw new Error("hashing this sub needs a secure context (https or localhost)");
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(sub));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return "h" + hex.slice(0, 40);
}

function useToken(token) {
  state.token = token.trim();
  const { exp } = jwtClaims(state.token);
  $("token-info").textContent = exp ? `token expires ${new Date(exp * 1000).toLocaleTimeString()}` : "";
}

// ---- requests -----------------------------------------------------------------------------------

const userSubject = (verb) => `chat.u.${state.uid}.sessions.${verb}`;
const sessionSubject = (verb) => `chat.u.${state.uid}.sessions.${state.session.id}.${verb}`;

/** Request-reply with JSON bodies; a docchat error reply is thrown as an Error with its code. */
async function call(subject, body) {
  const reply = await state.nc.request(subject, JSON.stringify(body), { timeout: TIMEOUT_MS });
  const code = reply.headers?.get("Nats-Service-Error-Code");
  if (code) {
    let message = reply.headers.get("Nats-Service-Error") || "error";
    try {
      message = reply.json().error.message;
    } catch { /* keep the header's message */ }
    throw Object.assign(new Error(`${code}: ${message}`), { code: Number(code) });
  }
  return reply.json();
}

// ---- messages -----------------------------------------------------------------------------------

/** True when m is a later state of the message than `held` (events and reads may arrive in any order). */
function supersedes(m, held) {
  if (!held) return true;
  if (m.updatedAt < held.updatedAt) return false;
  if (m.status !== held.status) return m.updatedAt > held.updatedAt || RANK[m.status] > RANK[held.status];
  return cpLength(m.content) >= held.len; // same status: the one holding more text (held may have deltas)
}

function merge(m) {
  const held = state.messages.get(m.id);
  if (!supersedes(m, held)) return;
  state.messages.set(m.id, { ...m, len: cpLength(m.content) });
  render(m.id);
}

function applyDelta({ messageId, seq, offset, text }) {
  const held = state.messages.get(messageId);
  if (held && ENDED.has(held.status)) return; // late delta of an ended message
  if (!held || offset > held.len) return refetch(messageId, seq); // missed some: re-read it
  const chars = [...text];
  if (offset + chars.length <= held.len) return; // already held
  const fresh = chars.slice(held.len - offset).join("");
  held.content += fresh;
  held.len = offset + chars.length;
  held.status = "streaming";
  render(messageId);
}

async function refetch(messageId, seq) {
  if (state.refetching.has(messageId)) return;
  state.refetching.add(messageId);
  try {
    const { messages } = await call(sessionSubject("messages"), { afterSeq: seq - 1, limit: 1 });
    messages.forEach(merge);
  } catch (err) {
    showError(err);
  } finally {
    state.refetching.delete(messageId);
  }
}

/** Where to read from: before the first message still being written, else after the last one held. */
function catchUpFrom() {
  let last = 0;
  let firstOpen = Infinity;
  for (const m of state.messages.values()) {
    last = Math.max(last, m.seq);
    if (!ENDED.has(m.status)) firstOpen = Math.min(firstOpen, m.seq);
  }
  return firstOpen === Infinity ? last : firstOpen - 1;
}

/** Read every message after what we hold (after subscribing, and after each reconnect). */
async function catchUp() {
  if (state.syncing) {
    state.syncAgain = true;
    return state.syncing;
  }
  state.syncing = (async () => {
    do {
      state.syncAgain = false;
      let afterSeq = catchUpFrom();
      for (;;) {
        const { messages, hasMore } = await call(sessionSubject("messages"), { afterSeq, limit: 100 });
        messages.forEach(merge);
        if (!hasMore || messages.length === 0) break;
        afterSeq = messages[messages.length - 1].seq;
      }
    } while (state.syncAgain);
  })();
  try {
    await state.syncing;
  } catch (err) {
    showError(err);
  } finally {
    state.syncing = null;
  }
}

function onEvent(err, msg) {
  if (err) return showError(err);
  let event;
  try {
    event = msg.json();
  } catch {
    return;
  }
  if (event.type === "message") merge(event.message);
  else if (event.type === "delta") applyDelta(event);
}

// ---- connection and chat ------------------------------------------------------------------------

async function connect() {
  clearError();
  useToken($("token").value);
  state.sub = $("sub").value.trim() || jwtClaims(state.token).sub || "";
  if (!state.sub) throw new Error("no sub: enter it or use a token with a sub claim");
  $("sub").value = state.sub;
  state.uid = await userToken(state.sub);
  const old = state.nc;
  state.nc = null;
  if (old) await old.close().catch(() => {});
  setStatus("connecting");
  const nc = await wsconnect({
    servers: $("ws-url").value.trim(),
    name: `docchat-web ${state.sub}`,
    authenticator: tokenAuthenticator(() => state.token),
    inboxPrefix: `_INBOX_${state.uid}`,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1000,
  });
  state.nc = nc;
  state.events = null;
  setStatus("connected");
  $("open-document").disabled = false;
  watch(nc);
  if (state.documentId) await openDocument(state.documentId); // a new connection: subscribe again
}

async function watch(nc) {
  nc.closed().then((err) => {
    if (state.nc !== nc) return;
    setStatus("closed");
    $("send").disabled = true;
    if (err) showError(err);
  });
  for await (const s of nc.status()) {
    if (state.nc !== nc) return;
    if (s.type === "disconnect") setStatus("disconnected");
    else if (s.type === "reconnecting") setStatus("reconnecting");
    else if (s.type === "reconnect") {
      setStatus("connected");
      if (state.session) catchUp(); // the subscription is restored before this read
    } else if (s.type === "error") showError(s.error);
  }
}

async function openDocument(documentId) {
  clearError();
  const { session } = await call(userSubject("getOrCreate"), { documentId });
  if (state.session?.id !== session.id) {
    state.messages.clear();
    $("messages").replaceChildren();
  }
  state.documentId = documentId;
  state.session = session;
  state.events?.unsubscribe();
  // Subscribe first, then read: nothing published in between is lost.
  state.events = state.nc.subscribe(sessionSubject("events"), { callback: onEvent });
  await state.nc.flush();
  $("session-info").textContent = `session ${session.id}`;
  $("send").disabled = false;
  await catchUp();
}

async function send() {
  clearError();
  const content = $("content").value;
  if (!content.trim()) return;
  const body = { content, documentXml: $("document-xml").value, clientMessageId: nuid.next() };
  const { message, reply } = await call(sessionSubject("send"), body);
  $("content").value = "";
  merge(message);
  merge(reply);
}

// ---- view ---------------------------------------------------------------------------------------

function render(id) {
  const m = state.messages.get(id);
  let li = document.querySelector(`li[data-id="${id}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = id;
    li.dataset.seq = m.seq;
    li.className = `msg ${m.role}`;
    li.innerHTML = '<div class="meta"></div><div class="content"></div><div class="error"></div>';
    const after = [...$("messages").children].find((other) => Number(other.dataset.seq) > m.seq);
    $("messages").insertBefore(li, after ?? null);
  }
  li.dataset.status = m.status;
  li.querySelector(".meta").textContent = `#${m.seq} ${m.role} · ${m.status}${m.model ? " · " + m.model : ""}`;
  li.querySelector(".content").textContent = m.content;
  li.querySelector(".error").textContent = m.error ? `${m.error.code}: ${m.error.message}` : "";
}

function setStatus(text) {
  $("status").textContent = text;
  $("status").dataset.state = text;
}

function showError(err) {
  console.warn(err);
  $("error").textContent = String(err?.message ?? err);
}

function clearError() {
  $("error").textContent = "";
}

const guarded = (fn) => () => fn().catch(showError);

async function init() {
  let config = {};
  try {
    const res = await fetch("config.json", { cache: "no-store" });
    if (res.ok) config = await res.json();
  } catch { /* no config: defaults */ }
  const params = new URLSearchParams(location.search);
  $("ws-url").value = params.get("ws") || config.wsUrl || `ws://${location.hostname || "127.0.0.1"}:8080`;
  $("connect").onclick = guarded(connect);
  $("update-token").onclick = () => useToken($("token").value);
  $("open-document").onclick = guarded(() => openDocument($("document-id").value));
  $("send").onclick = guarded(send);
  $("content").onkeydown = (e) => {
    if (e.key === "Enter") guarded(send)();
  };
  document.body.dataset.ready = "true";
}

init();
