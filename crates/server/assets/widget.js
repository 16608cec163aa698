/* Voronka web chat widget. Embed with:
 *   <script src="https://your-voronka/widget.js" data-channel="ID" async></script>
 * Optional: data-target="element-id" renders the chat inline in that element instead of
 * a floating button. No dependencies, no build step. Everything a visitor or the server
 * says is inserted with textContent, never as HTML. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var channel = script.getAttribute("data-channel");
  var base = new URL(script.src, location.href).origin;
  var targetId = script.getAttribute("data-target");
  var storeKey = "voronka-webchat-" + base + "-" + channel;
  var lang = (navigator.language || "en").slice(0, 2) === "ru" ? "ru" : "en";
  var T = {
    en: { open: "Chat with us", placeholder: "Type a message…", send: "Send", agree: "I agree to receive messages", close: "Close", offline: "Connection lost, retrying…" },
    ru: { open: "Написать нам", placeholder: "Напишите сообщение…", send: "Отправить", agree: "Я согласен получать сообщения", close: "Закрыть", offline: "Нет связи, переподключаемся…" }
  }[lang];

  var state = { token: null, consented: false, shown: {} };
  try { state.token = localStorage.getItem(storeKey); } catch (e) { /* private mode */ }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }
  function clientId() {
    var a = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function api(method, path, body) {
    var headers = { "Content-Type": "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return fetch(base + "/webchat/" + channel + path, {
      method: method, headers: headers, body: body ? JSON.stringify(body) : undefined
    }).then(function (r) {
      return r.json().then(function (j) { if (!r.ok) throw new Error((j.error && j.error.message) || r.status); return j; });
    });
  }

  // ---- markup
  var css = "" +
    ".vk-chat{font:15px/1.4 system-ui,sans-serif;color:#1d1f23;background:#fff;border:1px solid #c9ccd3;border-radius:12px;display:flex;flex-direction:column;overflow:hidden}" +
    ".vk-float{position:fixed;right:16px;bottom:16px;z-index:2147483000}" +
    ".vk-float .vk-chat{width:min(360px,calc(100vw - 32px));height:min(520px,calc(100vh - 96px));margin-bottom:8px;box-shadow:0 8px 24px rgba(0,0,0,.18)}" +
    ".vk-inline .vk-chat{height:480px}" +
    ".vk-log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px}" +
    ".vk-msg{max-width:80%;padding:8px 12px;border-radius:12px;white-space:pre-wrap;word-wrap:break-word}" +
    ".vk-in{align-self:flex-end;background:#1a56db;color:#fff}" +
    ".vk-out{align-self:flex-start;background:#eef0f3}" +
    ".vk-btns{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}" +
    ".vk-btns button,.vk-btns a{font:inherit;padding:6px 10px;border:1px solid #1a56db;border-radius:8px;background:#fff;color:#1a56db;cursor:pointer;text-decoration:none}" +
    ".vk-card{border:1px solid #c9ccd3;border-radius:8px;padding:8px;margin-top:6px;background:#fff}" +
    ".vk-card img,.vk-msg img{max-width:100%;border-radius:6px}" +
    ".vk-form{display:flex;gap:6px;padding:8px;border-top:1px solid #e3e5e8}" +
    ".vk-form input{flex:1;font:inherit;padding:8px;border:1px solid #8a8f98;border-radius:8px}" +
    ".vk-form button,.vk-toggle{font:inherit;padding:8px 14px;border:0;border-radius:8px;background:#1a56db;color:#fff;cursor:pointer}" +
    ".vk-consent{padding:8px 12px;border-top:1px solid #e3e5e8;font-size:13px;background:#fafbfc}" +
    ".vk-consent label{display:flex;gap:8px;align-items:flex-start}" +
    ".vk-status{font-size:12px;color:#8a1c1c;padding:0 12px}" +
    ".vk-chat :focus-visible{outline:3px solid #f59e0b;outline-offset:1px}";
  document.head.appendChild(el("style", null, css));

  var root = el("div", { "class": targetId ? "vk-inline" : "vk-float" });
  var box = el("section", { "class": "vk-chat", "aria-label": T.open });
  var log = el("div", { "class": "vk-log", role: "log", "aria-live": "polite", "data-voronka": "log" });
  var status = el("div", { "class": "vk-status", role: "status" });
  var consent = el("div", { "class": "vk-consent" });
  var consentLabel = el("label");
  var consentBox = el("input", { type: "checkbox", "data-voronka": "consent" });
  var consentText = el("span", null, T.agree);
  consentLabel.appendChild(consentBox);
  consentLabel.appendChild(consentText);
  consent.appendChild(consentLabel);
  var form = el("form", { "class": "vk-form" });
  var input = el("input", { type: "text", "aria-label": T.placeholder, placeholder: T.placeholder, maxlength: "4000", "data-voronka": "input", autocomplete: "off" });
  var sendBtn = el("button", { type: "submit", "data-voronka": "send" }, T.send);
  form.appendChild(input);
  form.appendChild(sendBtn);
  box.appendChild(log);
  box.appendChild(status);
  box.appendChild(consent);
  box.appendChild(form);
  root.appendChild(box);

  if (targetId) {
    var target = document.getElementById(targetId);
    (target || document.body).appendChild(root);
  } else {
    var toggle = el("button", { type: "button", "class": "vk-toggle", "aria-expanded": "false" }, T.open);
    box.hidden = true;
    toggle.addEventListener("click", function () {
      box.hidden = !box.hidden;
      toggle.setAttribute("aria-expanded", String(!box.hidden));
      if (!box.hidden) input.focus();
    });
    root.appendChild(toggle);
    document.body.appendChild(root);
  }

  // ---- rendering
  function scroll() { log.scrollTop = log.scrollHeight; }
  function buttonsOf(list, into) {
    if (!list || !list.length) return;
    var row = el("div", { "class": "vk-btns" });
    list.forEach(function (b) {
      if (b.type === "url") {
        var a = el("a", { href: b.url, target: "_blank", rel: "noopener noreferrer" }, b.label);
        row.appendChild(a);
      } else {
        var btn = el("button", { type: "button", "data-voronka": "button" }, b.label);
        btn.addEventListener("click", function () { press(b.label, b.payload || b.label); });
        row.appendChild(btn);
      }
    });
    into.appendChild(row);
  }
  function showOut(id, m) {
    if (id != null) { if (state.shown[id]) return; state.shown[id] = true; }
    var div = el("div", { "class": "vk-msg vk-out", "data-voronka": "out" });
    if (m.media && m.media.kind === "image") div.appendChild(el("img", { src: m.media.url, alt: "" }));
    if (m.media && m.media.kind === "file") div.appendChild(el("a", { href: m.media.url, target: "_blank", rel: "noopener noreferrer" }, m.media.file_name || m.media.url));
    if (m.text) div.appendChild(el("div", null, m.text));
    buttonsOf(m.buttons, div);
    (m.cards || []).forEach(function (c) {
      var card = el("div", { "class": "vk-card" });
      if (c.image_url) card.appendChild(el("img", { src: c.image_url, alt: "" }));
      card.appendChild(el("strong", null, c.title));
      if (c.subtitle) card.appendChild(el("div", null, c.subtitle));
      buttonsOf(c.buttons, card);
      div.appendChild(card);
    });
    log.appendChild(div);
    scroll();
  }
  function showIn(text) {
    log.appendChild(el("div", { "class": "vk-msg vk-in", "data-voronka": "in" }, text));
    scroll();
  }
  function setConsent(ok, text) {
    state.consented = ok;
    if (text) consentText.textContent = text;
    consentBox.checked = ok;
    consentBox.disabled = ok;
    consent.hidden = ok;
  }

  // ---- talking to the server
  function post(body, attempt) {
    body.client_id = body.client_id || clientId();
    return api("POST", "/messages", body).catch(function (e) {
      // The same client_id makes a retried post harmless.
      if ((attempt || 0) < 3) return new Promise(function (r) { setTimeout(r, 1000 * ((attempt || 0) + 1)); }).then(function () { return post(body, (attempt || 0) + 1); });
      status.textContent = String(e.message || e);
    });
  }
  function press(label, payload) { showIn(label); post({ type: "button", payload: payload }); }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    showIn(text);
    post({ type: "text", text: text });
  });
  consentBox.addEventListener("change", function () {
    if (consentBox.checked && !state.consented) { setConsent(true); post({ type: "consent" }); }
  });

  var source = null;
  function listen() {
    if (source) source.close();
    source = new EventSource(base + "/webchat/" + channel + "/stream?token=" + encodeURIComponent(state.token));
    source.addEventListener("open", function () { status.textContent = ""; });
    source.addEventListener("message", function (ev) {
      var push = JSON.parse(ev.data);
      var m = push.body && push.body.message ? push.body.message : push.body;
      showOut(push.outbox_id, m || {});
    });
    source.addEventListener("resync", function () { loadHistory(); });
    source.addEventListener("error", function () { status.textContent = T.offline; });
  }
  function loadHistory() {
    return api("GET", "/history").then(function (h) {
      log.textContent = "";
      state.shown = {};
      setConsent(h.consented, h.consent_text);
      h.items.forEach(function (it) { if (it.dir === "in") showIn(it.text); else showOut(it.id, it.message); });
      return h;
    });
  }
  function start() {
    var ready = state.token ? Promise.resolve() : api("POST", "/visitors").then(function (v) {
      state.token = v.token;
      try { localStorage.setItem(storeKey, v.token); } catch (e) { /* private mode */ }
      var ref = new URLSearchParams(location.search).get("ref");
      return post({ type: "start", reference: ref || undefined });
    });
    ready.then(function () {
      listen();
      return loadHistory();
    }).catch(function (e) {
      if (String(e.message).indexOf("visitor token") >= 0) {
        // A token from another install or key: start over as a new visitor.
        state.token = null;
        try { localStorage.removeItem(storeKey); } catch (x) { /* ignore */ }
        return start();
      }
      status.textContent = String(e.message || e);
    });
  }
  start();
})();
