/*
 * mcpkeeper web UI: plain JavaScript, no build step, no dependencies.
 *
 * The page runs under a strict CSP (default-src 'self'; script-src 'self';
 * style-src 'self'; connect-src 'self'; img-src 'self' data:): no inline
 * scripts or styles, everything visual is done with classes from style.css,
 * and every piece of data goes into the DOM through textContent or
 * setAttribute, never innerHTML.
 *
 * The API key comes in the URL fragment (http://127.0.0.1:PORT/#key=KEY, as
 * `mcpctl status` prints it). It is moved to sessionStorage and removed from
 * the address bar; API calls send it as X-API-Key, the event stream as
 * /events?apikey=KEY (EventSource cannot send headers).
 *
 * Stable selectors (tests may rely on these; keep them):
 *
 *   [data-role="live"]            live indicator, text "live" or "reconnecting"
 *                                 (hidden while the page has no usable key)
 *   [data-role="no-key"]          message shown when there is no API key or the
 *                                 API answered 401; tells the user to open the
 *                                 URL that `mcpctl status` prints
 *   [data-role="banner"]          dismissable banner for global errors, text in
 *                                 [data-role="banner-text"], closed by
 *                                 <button data-action="dismiss-banner">
 *   [data-role="servers"]         the grid that holds the cards
 *   [data-role="loading"]         "Loading servers…" until the first list arrives
 *   [data-role="empty"]           shown when no server is configured
 *
 *   Per server, sorted by name (code-point order):
 *   <section class="card" data-server="NAME">   one card; class "is-disabled"
 *                                 when the server is disabled
 *     [data-role="disabled"]      the text "disabled" (present only when disabled)
 *     [data-role="transport"]     "streamable-http", "sse" or "stdio"
 *     [data-role="url"]           the server URL (empty for stdio)
 *     <span class="badge" data-role="badge" data-state="STATE">TEXT</span>
 *                                 TEXT / STATE: "Authenticated"/authenticated,
 *                                 "Token Expired"/expired, "Auth Error"/error,
 *                                 "Not logged in"/none, "No OAuth"/no-oauth,
 *                                 "Logging in…"/logging-in, "Disabled"/disabled
 *     <span data-role="expires">  "expires in 4m 10s", "expired 3m ago",
 *                                 "no expiry given" (present only when relevant)
 *     <span data-role="next-refresh">  "next refresh in 3m 12s",
 *                                 "retrying in 4s (retry 2)", "refreshing…",
 *                                 "refresh failed", … (present only when relevant)
 *     [data-role="worker"]        worker state and client count (absent when
 *                                 the server is disabled)
 *     [data-role="waiting"]       "Waiting for the login in the other tab…" after
 *                                 Login, until an event says how it ended;
 *                                 holds a fallback link to the login page
 *     <p data-role="error">       the card's error: a failed API call, a failed
 *                                 login, else the last refresh error (present
 *                                 only when there is one)
 *     [data-role="note"]          informational note, e.g. a logout whose
 *                                 revocation at the provider failed
 *     <button data-action="login">   present when the server uses OAuth, is
 *                                 enabled and is not logged in, expired or
 *                                 in error
 *     <button data-action="logout">  present whenever a token is stored
 *                                 (authenticated, expired or in error)
 *     [data-role="tools"]         what the upstream offers (absent when the
 *                                 server is disabled): <button data-action=
 *                                 "tools"> ("Tools"; "Hide tools" while the
 *                                 list shows) fetches GET .../tools on click;
 *                                 then [data-role="tool-count"] ("3 tools",
 *                                 kept when the list is hidden), the list
 *                                 <ul data-role="tool-list"> of
 *                                 <li data-tool="NAME"> with .tool-name,
 *                                 .tool-desc and .tool-args ("text: string,
 *                                 n?: integer": '?' marks an optional one),
 *                                 or [data-role="tools-error"]. The
 *                                 upstream's text goes in as text only.
 *
 *     <input data-role="enabled" type="checkbox">  the enable toggle (PATCH
 *                                 {"enabled": ...}); checked when enabled
 *     <button data-action="remove">  Remove, after [data-role="confirm-remove"]
 *
 *   <details data-role="add-server">  the "Add server" form [data-role="add-form"]
 *                                 (URL servers: add-name, add-url, add-protocol,
 *                                 add-oauth, add-scopes; errors in add-error)
 *   <dialog data-role="confirm-remove">  "Remove NAME? ...", text in
 *                                 [data-role="remove-text"], buttons
 *                                 data-action="confirm-remove" and "cancel-remove"
 *
 *   <dialog data-role="confirm">  logout confirmation ("Log out of NAME? This
 *                                 deletes its token and revokes it at the
 *                                 provider."), text in [data-role="confirm-text"],
 *                                 buttons data-action="confirm-logout" ("Log out")
 *                                 and data-action="cancel" ("Cancel")
 *
 * Elements marked "present only when ..." are removed from the DOM otherwise,
 * so both `querySelector(...) === null` and visibility checks work.
 */
'use strict';

(function () {
  var KEY_STORAGE = 'mcpkeeper.apikey';
  var SERVER_EVENTS = ['oauth.token_refreshed', 'oauth.refresh_failed', 'oauth.refresh_interrupted', 'oauth.login_required',
    'servers.changed'];
  var POLL_MS = 30000;
  var RECONNECT_MIN_MS = 1000;
  var RECONNECT_MAX_MS = 30000;

  var state = {
    key: null,
    memoryKey: null,      // fallback when sessionStorage is unavailable
    stopped: true,        // no usable key: no API calls, no event stream
    servers: [],
    cards: new Map(),     // name -> card record (DOM refs + last server object)
    local: new Map(),     // name -> page-side state (pending login, errors, busy)
    loadedOnce: false,
    loading: false,
    reloadAgain: false,
    fetchSeq: 0,          // incremented when a fetch of the server list starts
    es: null,
    esBackoff: RECONNECT_MIN_MS,
    esTimer: null,
    pollTimer: null,
    lastTick: Date.now() / 1000,
    confirmFor: null,
    removeFor: null,      // the server the remove confirmation is about
    titleSeq: 0,
  };

  function role(name) {
    return document.querySelector('[data-role="' + name + '"]');
  }

  function el(tag, className, text) {
    var e = document.createElement(tag);
    if (className)
      e.className = className;
    if (text !== undefined && text !== null)
      e.textContent = text;
    return e;
  }

  /* Put child into parent when want, take it out otherwise; keeps order by
   * inserting before the next sibling that is present. */
  function place(parent, child, want, before) {
    if (want) {
      if (child.parentNode !== parent) {
        var ref = null;
        for (var i = 0; before && i < before.length; i++) {
          if (before[i].parentNode === parent) {
            ref = before[i];
            break;
          }
        }
        parent.insertBefore(child, ref);
      }
    } else if (child.parentNode) {
      child.parentNode.removeChild(child);
    }
  }

  /* ---- the API key ---- */

  function storageGet() {
    try {
      return window.sessionStorage.getItem(KEY_STORAGE);
    } catch (e) {
      return state.memoryKey;
    }
  }

  function storageSet(value) {
    state.memoryKey = value;
    try {
      if (value === null)
        window.sessionStorage.removeItem(KEY_STORAGE);
      else
        window.sessionStorage.setItem(KEY_STORAGE, value);
    } catch (e) {
      /* keep it in memory only */
    }
  }

  /* The key from a fragment such as "#key=KEY" (other parameters allowed);
   * undefined when the fragment has no key parameter at all. Decoded with
   * decodeURIComponent, not URLSearchParams, so a "+" stays a "+". */
  function keyFromHash() {
    var h = window.location.hash;
    if (!h || h.length < 2)
      return undefined;
    var parts = h.slice(1).split('&');
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf('=');
      var name = eq < 0 ? parts[i] : parts[i].slice(0, eq);
      if (name !== 'key')
        continue;
      var value = eq < 0 ? '' : parts[i].slice(eq + 1);
      try {
        return decodeURIComponent(value);
      } catch (e) {
        return value;
      }
    }
    return undefined;
  }

  /* Take a key from the fragment into storage and wipe it from the address
   * bar (and from history). Returns the key to use, or null. */
  function takeKey() {
    var fromHash = keyFromHash();
    if (fromHash !== undefined) {
      try {
        window.history.replaceState(window.history.state, '',
                                    window.location.pathname + window.location.search);
      } catch (e) {
        window.location.hash = '';
      }
      if (fromHash)
        storageSet(fromHash);
    }
    var key = storageGet();
    return key ? key : null;
  }

  /* ---- global messages ---- */

  function showNoKey(rejected) {
    state.stopped = true;
    closeEvents();
    if (state.pollTimer) {
      clearInterval(state.pollTimer);
      state.pollTimer = null;
    }
    if (rejected)
      storageSet(null);
    role('no-key-reason').textContent = rejected
      ? 'The daemon did not accept the API key this page has: it is wrong, or it has been rotated.'
      : 'No API key was given to this page.';
    role('no-key').hidden = false;
    role('servers').hidden = true;
    role('loading').hidden = true;
    role('empty').hidden = true;
    role('live').hidden = true;
    hideBanner();
    closeConfirm();
  }

  function showBanner(text, tag) {
    var b = role('banner');
    role('banner-text').textContent = text;
    b.setAttribute('data-tag', tag || '');
    b.hidden = false;
  }

  function hideBanner(tag) {
    var b = role('banner');
    if (tag && b.getAttribute('data-tag') !== tag)
      return;
    b.hidden = true;
  }

  function setLive(up) {
    var live = role('live');
    live.textContent = up ? 'live' : 'reconnecting';
    live.classList.toggle('is-up', up);
    live.classList.toggle('is-down', !up);
  }

  /* ---- API calls ---- */

  function ApiError(status, kind, message) {
    this.name = 'ApiError';
    this.status = status;
    this.kind = kind;
    this.message = message;
  }
  ApiError.prototype = Object.create(Error.prototype);
  ApiError.prototype.constructor = ApiError;

  /* The answer's data, or with whole the whole body (paging fields too);
   * body, when given, goes as JSON. */
  function api(method, path, body, whole) {
    var key = state.key;
    var headers = { 'X-API-Key': key, 'Accept': 'application/json' };
    if (body !== undefined)
      headers['Content-Type'] = 'application/json';
    return fetch(path, {
      method: method,
      headers: headers,
      body: body !== undefined ? JSON.stringify(body) : undefined,
      cache: 'no-store',
      credentials: 'same-origin',
      redirect: 'error',
    }).then(function (res) {
      return res.text().then(function (text) {
        var body = null;
        try {
          body = text ? JSON.parse(text) : null;
        } catch (e) {
          body = null;
        }
        if (res.status === 401) {
          /* Only give up if the key that failed is still the current one. */
          if (key === state.key)
            showNoKey(true);
          throw new ApiError(401, 'unauthorized', 'The API key was not accepted.');
        }
        if (res.ok && body && body.success === true)
          return whole ? body : body.data;
        /* Errors are {"success": false, "error": MESSAGE, "kind": KIND}. */
        var given = body && typeof body.error === 'string' && body.error ? body.error : null;
        var msg = given || 'HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : '');
        if (res.status === 403 && !given)
          msg = 'Management through the HTTP API is disabled on this daemon.';
        throw new ApiError(res.status, body && typeof body.kind === 'string' ? body.kind : 'http', msg);
      });
    }, function (e) {
      throw new ApiError(0, 'network', 'The mcpkeeper daemon cannot be reached' +
                         (e && e.message ? ' (' + e.message + ')' : '') + '.');
    });
  }

  /* Every page of the server list: the keeper pages a long one
   * (next_offset is null on the last page). */
  function listServers() {
    var all = [];
    function page(offset, n) {
      return api('GET', '/api/v1/servers?offset=' + offset, undefined, true).then(function (body) {
        if (!Array.isArray(body.data))
          throw new ApiError(0, 'protocol', 'the server list is not an array');
        all = all.concat(body.data);
        var next = body.next_offset;
        if (typeof next === 'number' && next > offset && n < 100000)
          return page(next, n + 1);
        return all;
      });
    }
    return page(0, 0);
  }

  function serverPath(name, action) {
    return '/api/v1/servers/' + encodeURIComponent(name) + '/' + action;
  }

  /* Fetch the server list and render it. Calls that arrive while a fetch is
   * in flight are folded into one more fetch after it. */
  function loadServers() {
    if (state.stopped)
      return;
    if (state.loading) {
      state.reloadAgain = true;
      return;
    }
    state.loading = true;
    state.reloadAgain = false;
    var seq = ++state.fetchSeq;
    listServers().then(function (data) {
      if (state.stopped)
        return;
      if (!Array.isArray(data))
        throw new ApiError(0, 'protocol', 'the server list is not an array');
      state.servers = data.filter(function (s) {
        return s && typeof s.name === 'string';
      });
      state.loadedOnce = true;
      hideBanner('load');
      render(seq);
    }).catch(function (e) {
      if (state.stopped || e.status === 401)
        return;
      showBanner('Could not load the servers: ' + e.message, 'load');
      if (!state.loadedOnce)
        role('loading').textContent = 'The server list could not be loaded.';
    }).then(function () {
      state.loading = false;
      if (state.reloadAgain)
        loadServers();
    });
  }

  /* ---- page-side state per server ---- */

  function local(name) {
    var l = state.local.get(name);
    if (!l) {
      l = { pending: false, pendingSeq: 0, loginUrl: null, error: null, note: null, busy: false };
      state.local.set(name, l);
    }
    return l;
  }

  /* ---- formatting ---- */

  var UNITS = [[86400, 'd'], [3600, 'h'], [60, 'm'], [1, 's']];

  function fmtDuration(sec, maxUnits) {
    sec = Math.max(0, Math.floor(sec));
    var i = 0;
    while (i < UNITS.length - 1 && sec < UNITS[i][0])
      i++;
    var out = [];
    for (; i < UNITS.length && out.length < maxUnits; i++) {
      var n = Math.floor(sec / UNITS[i][0]);
      sec -= n * UNITS[i][0];
      out.push(n + UNITS[i][1]);
    }
    return out.join(' ');
  }

  function isNum(v) {
    return typeof v === 'number' && isFinite(v);
  }

  /* An API time (RFC 3339 UTC with milliseconds, "2026-12-07T16:40:01.123Z")
   * in seconds since the epoch, or null. */
  function timeOf(text) {
    if (typeof text !== 'string')
      return null;
    var ms = Date.parse(text);
    return isFinite(ms) ? ms / 1000 : null;
  }

  function until(t, now) {
    return Math.ceil(t - now);
  }

  function expiresText(s, now) {
    if (!s.oauth)
      return null;
    var exp = timeOf(s.token_expires_at);
    if (exp === null)
      return s.oauth_status === 'authenticated' ? 'no expiry given' : null;
    var left = until(exp, now);
    if (left > 0)
      return 'expires in ' + fmtDuration(left, 2);
    var ago = Math.floor(now - exp);
    return ago < 1 ? 'expired just now' : 'expired ' + fmtDuration(ago, 1) + ' ago';
  }

  function refreshText(s, now) {
    var r = s.refresh || {};
    var st = r.state;
    var n = isNum(r.retry_count) ? r.retry_count : 0;
    var at = timeOf(r.next_at);
    if (!s.oauth && (!st || st === 'idle'))
      return null;
    switch (st) {
    case 'refreshing':
      return 'refreshing…';
    case 'retrying':
      if (at === null)
        return 'retrying (retry ' + n + ')';
      return until(at, now) > 0
        ? 'retrying in ' + fmtDuration(until(at, now), 2) + ' (retry ' + n + ')'
        : 'retrying now (retry ' + n + ')';
    case 'scheduled':
      if (at === null)
        return 'refresh scheduled';
      return until(at, now) > 0 ? 'next refresh in ' + fmtDuration(until(at, now), 2) : 'next refresh due now';
    case 'failed':
      return n > 0 ? 'refresh failed after ' + n + (n === 1 ? ' retry' : ' retries') : 'refresh failed';
    case 'interrupted':
      return 'refresh interrupted by a crash: log in again';
    default:
      return s.oauth_status === 'authenticated' ? 'not scheduled' : null;
    }
  }

  function badgeFor(s, l) {
    if (s.enabled === false)
      return ['Disabled', 'disabled'];
    if (!s.oauth)
      return ['No OAuth', 'no-oauth'];
    if (s.login_in_progress || l.pending)
      return ['Logging in…', 'logging-in'];
    var lr = s.login_required;
    if (lr && typeof lr === 'object') {
      if (typeof lr.scope === 'string')
        return ['Needs login (scope ' + lr.scope + ')', 'expired'];
      if (typeof lr.issuer === 'string')
        return ['Needs login (at ' + lr.issuer + ')', 'expired'];
      return ['Needs login', 'expired'];
    }
    switch (s.oauth_status) {
    case 'authenticated':
      return ['Authenticated', 'authenticated'];
    case 'expired':
      return ['Token Expired', 'expired'];
    case 'error':
      return ['Auth Error', 'error'];
    default:
      return ['Not logged in', 'none'];
    }
  }

  function workerText(s) {
    var w = s.worker;
    if (!w || typeof w.state !== 'string' || w.state === 'disabled')
      return null;
    var parts = ['worker ' + w.state];
    if (isNum(w.clients))
      parts.push(w.clients + (w.clients === 1 ? ' client' : ' clients'));
    if (isNum(w.restarts) && w.restarts > 0)
      parts.push(w.restarts + (w.restarts === 1 ? ' restart' : ' restarts'));
    if (w.insecure_http === true)
      parts.push('plain http: token sent in clear');
    return parts.join(' · ');
  }

  function isHttpUrl(u) {
    if (typeof u !== 'string')
      return false;
    try {
      var p = new URL(u);
      return p.protocol === 'https:' || p.protocol === 'http:';
    } catch (e) {
      return false;
    }
  }

  /* ---- cards ---- */

  function createCard(name) {
    var c = { name: name, srv: null };
    var titleId = 'card-title-' + (++state.titleSeq);

    c.el = el('section', 'card');
    c.el.setAttribute('data-server', name);
    c.el.setAttribute('aria-labelledby', titleId);

    var head = el('div', 'card-head');
    var titleWrap = el('div', 'card-title-wrap');
    c.title = el('h2', 'card-title', name);
    c.title.id = titleId;
    c.disabledTag = el('span', 'tag', 'disabled');
    c.disabledTag.setAttribute('data-role', 'disabled');
    titleWrap.appendChild(c.title);
    head.appendChild(titleWrap);
    c.titleWrap = titleWrap;

    /* The status region: the badge, announced when it changes. */
    var status = el('div', 'card-status');
    status.setAttribute('aria-live', 'polite');
    status.setAttribute('aria-atomic', 'true');
    c.badge = el('span', 'badge');
    c.badge.setAttribute('data-role', 'badge');
    status.appendChild(c.badge);
    head.appendChild(status);
    c.el.appendChild(head);

    var meta = el('p', 'card-meta');
    c.transport = el('span', 'transport');
    c.transport.setAttribute('data-role', 'transport');
    c.url = el('span', 'url');
    c.url.setAttribute('data-role', 'url');
    meta.appendChild(c.transport);
    meta.appendChild(c.url);
    c.el.appendChild(meta);

    /* Times change every second: kept out of the live regions. */
    c.times = el('dl', 'card-times');
    c.expiresRow = el('div', 'time-row');
    c.expiresRow.appendChild(el('dt', null, 'Token'));
    var dd1 = el('dd');
    c.expires = el('span');
    c.expires.setAttribute('data-role', 'expires');
    dd1.appendChild(c.expires);
    c.expiresRow.appendChild(dd1);
    c.refreshRow = el('div', 'time-row');
    c.refreshRow.appendChild(el('dt', null, 'Refresh'));
    var dd2 = el('dd');
    c.nextRefresh = el('span');
    c.nextRefresh.setAttribute('data-role', 'next-refresh');
    dd2.appendChild(c.nextRefresh);
    c.refreshRow.appendChild(dd2);
    c.el.appendChild(c.times);

    c.worker = el('p', 'card-worker');
    c.worker.setAttribute('data-role', 'worker');
    c.el.appendChild(c.worker);

    /* Messages: the second live region. */
    c.messages = el('div', 'card-messages');
    c.messages.setAttribute('aria-live', 'polite');
    c.waiting = el('p', 'msg msg-waiting');
    c.waiting.setAttribute('data-role', 'waiting');
    c.waiting.appendChild(el('span', null, 'Waiting for the login in the other tab…'));
    c.waiting.appendChild(document.createTextNode(' '));
    c.loginLink = el('a', 'msg-link', 'Open the login page');
    c.loginLink.setAttribute('target', '_blank');
    c.loginLink.setAttribute('rel', 'noopener noreferrer');
    c.waiting.appendChild(c.loginLink);
    c.error = el('p', 'msg msg-error');
    c.error.setAttribute('data-role', 'error');
    c.note = el('p', 'msg msg-note');
    c.note.setAttribute('data-role', 'note');
    c.el.appendChild(c.messages);

    c.actions = el('div', 'card-actions');
    c.loginBtn = el('button', 'btn btn-primary', 'Login');
    c.loginBtn.type = 'button';
    c.loginBtn.setAttribute('data-action', 'login');
    c.logoutBtn = el('button', 'btn', 'Logout');
    c.logoutBtn.type = 'button';
    c.logoutBtn.setAttribute('data-action', 'logout');
    c.el.appendChild(c.actions);
    createManage(c);
    createToolsBox(c);
    return c;
  }

  /* ---- tools: what the upstream offers, fetched on click ---- */

  function createToolsBox(c) {
    c.tools = el('div', 'card-tools');
    c.tools.setAttribute('data-role', 'tools');
    c.toolsBtn = el('button', 'btn btn-quiet', 'Tools');
    c.toolsBtn.type = 'button';
    c.toolsBtn.setAttribute('data-action', 'tools');
    c.toolsBtn.setAttribute('aria-expanded', 'false');
    c.toolCount = el('span', 'tool-count');
    c.toolCount.setAttribute('data-role', 'tool-count');
    c.toolList = el('ul', 'tool-list');
    c.toolList.setAttribute('data-role', 'tool-list');
    c.toolsError = el('p', 'msg msg-error');
    c.toolsError.setAttribute('data-role', 'tools-error');
    c.tools.appendChild(c.toolsBtn);
    c.toolsOpen = false;
    c.toolsBusy = false;
  }

  function argsText(args) {
    if (!Array.isArray(args))
      return '';
    return args.map(function (a) {
      var name = a && typeof a.name === 'string' ? a.name : '?';
      var type = a && typeof a.type === 'string' ? a.type : 'any';
      return name + (a && a.required === true ? '' : '?') + ': ' + type;
    }).join(', ');
  }

  function fillTools(c, data) {
    var tools = data && Array.isArray(data.tools) ? data.tools : [];
    var count = tools.length === 1 ? '1 tool' : tools.length + ' tools';
    if (data && typeof data.truncated === 'string')
      count += ' (the listing stopped early: ' + data.truncated + ')';
    c.toolCount.textContent = count;
    c.toolList.textContent = '';
    tools.forEach(function (t) {
      var li = el('li', 'tool');
      var name = t && typeof t.name === 'string' ? t.name : '';
      var args = argsText(t && t.arguments);
      li.setAttribute('data-tool', name);
      li.appendChild(el('code', 'tool-name', name));
      if (t && typeof t.description === 'string' && t.description)
        li.appendChild(el('p', 'tool-desc', t.description));
      if (args)
        li.appendChild(el('p', 'tool-args', args));
      c.toolList.appendChild(li);
    });
  }

  function updateTools(c) {
    place(c.el, c.tools, c.srv.enabled !== false);
    place(c.tools, c.toolCount, !!c.toolCount.textContent);
    place(c.tools, c.toolList, c.toolsOpen);
    place(c.tools, c.toolsError, !!c.toolsError.textContent);
    c.toolsBtn.disabled = c.toolsBusy;
    c.toolsBtn.textContent = c.toolsBusy ? 'Loading tools…' : c.toolsOpen ? 'Hide tools' : 'Tools';
    c.toolsBtn.setAttribute('aria-expanded', c.toolsOpen ? 'true' : 'false');
  }

  function doTools(c) {
    if (c.toolsOpen) {
      c.toolsOpen = false;
      updateTools(c);
      return;
    }
    c.toolsBusy = true;
    c.toolsError.textContent = '';
    updateTools(c);
    api('GET', serverPath(c.name, 'tools')).then(function (data) {
      fillTools(c, data);
      c.toolsOpen = true;
    }).catch(function (e) {
      c.toolsError.textContent = 'Tools: ' + e.message;
    }).then(function () {
      c.toolsBusy = false;
      if (state.cards.get(c.name) === c)
        updateTools(c);
    });
  }

  function updateCard(c, seq) {
    var s = c.srv;
    var l = local(c.name);

    /* A login this page started has ended when a list fetched after the
     * POST returned says no login is in progress (an event was missed). */
    if (l.pending && seq && seq > l.pendingSeq && s.login_in_progress === false)
      l.pending = false;
    if (s.oauth_status === 'authenticated' && !l.pending && l.error && l.error.indexOf('Login failed') === 0)
      l.error = null;

    var disabled = s.enabled === false;
    c.el.classList.toggle('is-disabled', disabled);
    place(c.titleWrap, c.disabledTag, disabled);

    var proto = typeof s.protocol === 'string' ? s.protocol : '';
    c.transport.textContent = proto || 'unknown transport';
    c.url.textContent = proto === 'stdio' ? '' : (typeof s.url === 'string' ? s.url : '');
    c.url.title = c.url.textContent;

    var b = badgeFor(s, l);
    if (c.badge.textContent !== b[0])
      c.badge.textContent = b[0];
    c.badge.setAttribute('data-state', b[1]);
    c.badge.className = 'badge badge-' + b[1];

    var wt = workerText(s);
    c.worker.textContent = wt || '';
    c.worker.hidden = !wt;

    var errText = l.error;
    if (!errText && s.refresh && typeof s.refresh.last_error === 'string' && s.refresh.last_error)
      errText = 'Last refresh error: ' + s.refresh.last_error;
    if (errText && c.error.textContent !== errText)
      c.error.textContent = errText;
    if (l.note && c.note.textContent !== l.note)
      c.note.textContent = l.note;
    if (l.pending && l.loginUrl)
      c.loginLink.setAttribute('href', l.loginUrl);
    place(c.messages, c.waiting, l.pending, [c.error, c.note]);
    place(c.messages, c.error, !!errText, [c.note]);
    place(c.messages, c.note, !!l.note);

    var st = s.oauth_status;
    /* A disabled server cannot log in (the keeper answers 503); a stored
     * token, whatever its state, can always be logged out. */
    var canLogin = !!s.oauth && !disabled &&
                   (st === 'none' || st === 'expired' || st === 'error' || st == null || !!s.login_required);
    var canLogout = !!s.oauth && typeof st === 'string' && st !== 'none';
    c.loginBtn.disabled = l.busy;
    c.logoutBtn.disabled = l.busy;
    place(c.actions, c.loginBtn, canLogin, [c.logoutBtn]);
    place(c.actions, c.logoutBtn, canLogout);
    c.actions.hidden = !(canLogin || canLogout);
    updateTools(c);

    updateManage(c, l);
    updateTimes(c, Date.now() / 1000);
  }

  function updateTimes(c, now) {
    var s = c.srv;
    var e = expiresText(s, now);
    var r = refreshText(s, now);
    if (e !== null && c.expires.textContent !== e)
      c.expires.textContent = e;
    if (r !== null && c.nextRefresh.textContent !== r)
      c.nextRefresh.textContent = r;
    c.expires.className = e !== null && e.indexOf('expired') === 0 ? 'is-past' : '';
    place(c.times, c.expiresRow, e !== null, [c.refreshRow]);
    place(c.times, c.refreshRow, r !== null);
    c.times.hidden = e === null && r === null;
  }

  function byName(a, b) {
    return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  }

  function render(seq) {
    var grid = role('servers');
    var list = state.servers.slice().sort(byName);
    var names = new Set(list.map(function (s) { return s.name; }));

    role('loading').hidden = true;
    grid.hidden = false;
    state.cards.forEach(function (c, name) {
      if (!names.has(name)) {
        c.el.remove();
        state.cards.delete(name);
        state.local.delete(name);
      }
    });
    var prev = null;
    list.forEach(function (s) {
      var c = state.cards.get(s.name);
      if (!c) {
        c = createCard(s.name);
        state.cards.set(s.name, c);
      }
      c.srv = s;
      updateCard(c, seq);
      var want = prev ? prev.nextSibling : grid.firstChild;
      if (c.el !== want)
        grid.insertBefore(c.el, want);
      prev = c.el;
    });
    role('empty').hidden = list.length !== 0;
  }

  function rerender(name) {
    var c = state.cards.get(name);
    if (c && c.srv)
      updateCard(c, 0);
  }

  /* Every second: the countdowns; when an expiry or a scheduled refresh
   * passes, fetch the list again shortly after (the badge may change without
   * an event, e.g. a token that simply ran out). */
  function tick() {
    var now = Date.now() / 1000;
    var crossed = false;
    var last = state.lastTick;
    state.cards.forEach(function (c) {
      if (!c.srv)
        return;
      updateTimes(c, now);
      var r = c.srv.refresh || {};
      [timeOf(c.srv.token_expires_at), timeOf(r.next_at)].forEach(function (t) {
        if (t !== null && last < t && t <= now)
          crossed = true;
      });
    });
    state.lastTick = now;
    if (crossed && !state.stopped)
      setTimeout(loadServers, 1500);
  }

  /* ---- actions ---- */

  function doLogin(c) {
    var name = c.name;
    var l = local(name);
    l.error = null;
    l.note = null;
    l.busy = true;
    rerender(name);
    api('POST', serverPath(name, 'login')).then(function (data) {
      var url = data && data.url;
      if (!isHttpUrl(url))
        throw new ApiError(0, 'protocol', 'the daemon returned no usable authorization URL');
      l.pending = true;
      l.loginUrl = url;
      l.pendingSeq = state.fetchSeq;
      window.open(url, '_blank', 'noopener');
    }).catch(function (e) {
      if (e.status !== 401)
        l.error = 'Login failed: ' + e.message;
    }).then(function () {
      l.busy = false;
      rerender(name);
      loadServers();
    });
  }

  function doLogout(name) {
    var l = local(name);
    l.error = null;
    l.note = null;
    l.busy = true;
    rerender(name);
    api('POST', serverPath(name, 'logout')).then(function (data) {
      l.pending = false;
      if (data && data.revoked === false) {
        l.note = typeof data.revoke_error === 'string' && data.revoke_error
          ? 'Logged out. The token was deleted, but revoking it at the provider failed: ' + data.revoke_error
          : 'Logged out. The token was deleted; the provider did not revoke it.';
      }
    }).catch(function (e) {
      if (e.status !== 401)
        l.error = 'Logout failed: ' + e.message;
    }).then(function () {
      l.busy = false;
      rerender(name);
      loadServers();
    });
  }

  /* ---- the logout confirmation ---- */

  /* A dialog opened modally (where the browser can), focus on its Cancel. */
  function showDialog(dlg, cancelAction) {
    if (typeof dlg.showModal === 'function') {
      if (!dlg.open)
        dlg.showModal();
    } else {
      dlg.setAttribute('open', '');
    }
    dlg.querySelector('[data-action="' + cancelAction + '"]').focus();
  }

  function hideDialog(dlg) {
    if (!dlg || !dlg.open)
      return;
    if (typeof dlg.close === 'function')
      dlg.close();
    else
      dlg.removeAttribute('open');
  }

  function openConfirm(c) {
    state.confirmFor = c.name;
    role('confirm-text').textContent =
      'Log out of ' + c.name + '? This deletes its token and revokes it at the provider.';
    showDialog(role('confirm'), 'cancel');
  }

  function closeConfirm() {
    hideDialog(role('confirm'));
  }

  /* After the dialog closes, put focus back on the card it came from. */
  function onConfirmClosed() {
    var name = state.confirmFor;
    state.confirmFor = null;
    var c = name !== null ? state.cards.get(name) : null;
    if (!c)
      return;
    var target = c.logoutBtn.parentNode ? c.logoutBtn : c.loginBtn.parentNode ? c.loginBtn : null;
    if (target)
      target.focus();
  }

  /* ---- managing servers: add, enable toggle, remove ---- */

  function createManage(c) {
    c.manage = el('div', 'card-manage');
    var label = el('label');
    c.enabledBox = el('input');
    c.enabledBox.type = 'checkbox';
    c.enabledBox.setAttribute('data-role', 'enabled');
    label.appendChild(c.enabledBox);
    label.appendChild(document.createTextNode(' Enabled'));
    c.manage.appendChild(label);
    c.removeBtn = el('button', 'btn btn-quiet', 'Remove');
    c.removeBtn.type = 'button';
    c.removeBtn.setAttribute('data-action', 'remove');
    c.manage.appendChild(c.removeBtn);
    c.el.appendChild(c.manage);
    c.enabledBox.addEventListener('change', function () {
      setEnabled(c.name, c.enabledBox.checked);
    });
  }

  function updateManage(c, l) {
    /* While a change runs the box shows what the user asked for. */
    if (!l.busy)
      c.enabledBox.checked = c.srv.enabled !== false;
    c.enabledBox.disabled = !!l.busy;
    c.removeBtn.disabled = !!l.busy;
  }

  function changeServer(name, method, body, failed, done) {
    var l = local(name);
    l.error = null;
    l.note = null;
    l.busy = true;
    rerender(name);
    api(method, '/api/v1/servers/' + encodeURIComponent(name), body).then(function (data) {
      if (done)
        done();
      /* A token the change left behind stays until a logout: say so. */
      if (data && typeof data.orphaned === 'string')
        showBanner((data.previous || name) + ': its token is kept as orphaned until it is logged out ' +
                   '(mcpctl auth logout -s ' + (data.previous || name) + ').', 'orphaned');
    }).catch(function (e) {
      if (e.status !== 401)
        l.error = failed + ': ' + e.message;
    }).then(function () {
      l.busy = false;
      rerender(name);
      loadServers();
    });
  }

  function setEnabled(name, on) {
    changeServer(name, 'PATCH', { enabled: on }, on ? 'Enable failed' : 'Disable failed', function () {
      var c = state.cards.get(name);
      if (c && c.srv)
        c.srv.enabled = on;    /* until the list fetched next says so too */
    });
  }

  function openRemove(c) {
    state.removeFor = c.name;
    role('remove-text').textContent = 'Remove ' + c.name + ' from the configuration? A token it has stays ' +
      'stored, shown as orphaned, until you log it out.';
    showDialog(role('confirm-remove'), 'cancel-remove');
  }

  function closeRemove() {
    hideDialog(role('confirm-remove'));
  }

  function onAddSubmit(ev) {
    ev.preventDefault();
    var err = role('add-error');
    var btn = role('add-form').querySelector('[data-action="add-server"]');
    var body = {
      name: role('add-name').value.trim(),
      url: role('add-url').value.trim(),
      protocol: role('add-protocol').value,
    };
    var scopes = role('add-scopes').value.trim();
    if (!role('add-oauth').checked)
      body.oauth = false;
    else if (scopes)
      body.oauth = { scopes: scopes.split(/\s+/) };
    err.hidden = true;
    btn.disabled = true;
    api('POST', '/api/v1/servers', body).then(function () {
      role('add-form').reset();
      role('add-server').open = false;
    }).catch(function (e) {
      err.textContent = 'Adding failed: ' + e.message;
      err.hidden = false;
    }).then(function () {
      btn.disabled = false;
      loadServers();
    });
  }

  /* ---- the event stream ---- */

  function closeEvents() {
    if (state.esTimer) {
      clearTimeout(state.esTimer);
      state.esTimer = null;
    }
    if (state.es) {
      state.es.close();
      state.es = null;
    }
  }

  function scheduleReconnect() {
    if (state.esTimer || state.stopped)
      return;
    var delay = state.esBackoff;
    state.esBackoff = Math.min(state.esBackoff * 2, RECONNECT_MAX_MS);
    state.esTimer = setTimeout(function () {
      state.esTimer = null;
      connectEvents();
    }, delay);
  }

  function onServerEvent(ev) {
    var msg = null;
    try {
      msg = JSON.parse(ev.data);
    } catch (e) {
      msg = null;
    }
    var p = (msg && typeof msg === 'object' && (msg.payload || msg.data)) || {};
    if (ev.type === 'servers.changed' && typeof p.server === 'string' && state.cards.has(p.server)) {
      var l = local(p.server);
      if (p.reason === 'oauth_login_failed') {
        l.pending = false;
        l.error = 'Login failed: ' + (typeof p.error === 'string' && p.error ? p.error : 'unknown error');
      } else if (p.reason === 'oauth_login') {
        l.pending = false;
        l.error = null;
        l.note = null;
      } else if (p.reason === 'oauth_logout') {
        l.pending = false;
      }
      rerender(p.server);
    }
    loadServers();
  }

  function connectEvents() {
    if (state.stopped)
      return;
    closeEvents();
    var es;
    try {
      es = new EventSource('/events?apikey=' + encodeURIComponent(state.key));
    } catch (e) {
      setLive(false);
      scheduleReconnect();
      return;
    }
    state.es = es;
    es.onopen = function () {
      if (state.es !== es)
        return;
      setLive(true);
      state.esBackoff = RECONNECT_MIN_MS;
      /* Whatever happened while the stream was down. */
      loadServers();
    };
    es.onerror = function () {
      if (state.es !== es)
        return;
      setLive(false);
      if (es.readyState === EventSource.CLOSED) {
        /* The browser gave up (an HTTP error such as 401, or a reply that is
         * not an event stream): retry ourselves, and let the API tell us
         * whether the key is still good. */
        es.close();
        state.es = null;
        scheduleReconnect();
        loadServers();
      }
    };
    SERVER_EVENTS.forEach(function (t) {
      es.addEventListener(t, onServerEvent);
    });
    es.addEventListener('message', onServerEvent);    /* unnamed events */
    es.addEventListener('ping', function () { /* keep-alive only */ });
  }

  /* ---- start ---- */

  function start() {
    var key = takeKey();
    if (!key) {
      showNoKey(false);
      return;
    }
    state.key = key;
    state.stopped = false;
    role('no-key').hidden = true;
    role('live').hidden = false;
    if (!state.loadedOnce) {
      role('loading').hidden = false;
      role('loading').textContent = 'Loading servers…';
    }
    setLive(false);
    state.esBackoff = RECONNECT_MIN_MS;
    loadServers();
    connectEvents();
    if (!state.pollTimer) {
      state.pollTimer = setInterval(function () {
        if (!document.hidden)
          loadServers();
      }, POLL_MS);
    }
  }

  function onClick(ev) {
    var btn = ev.target.closest('button[data-action]');
    if (!btn)
      return;
    var action = btn.getAttribute('data-action');
    if (action === 'dismiss-banner') {
      hideBanner();
      return;
    }
    if (action === 'cancel') {
      closeConfirm();
      return;
    }
    if (action === 'cancel-remove') {
      closeRemove();
      return;
    }
    if (action === 'confirm-remove') {
      var gone = state.removeFor;
      state.removeFor = null;
      closeRemove();
      if (gone !== null && state.cards.has(gone))
        changeServer(gone, 'DELETE', undefined, 'Remove failed');
      return;
    }
    if (action === 'confirm-logout') {
      var name = state.confirmFor;
      closeConfirm();
      if (name !== null && state.cards.has(name))
        doLogout(name);
      return;
    }
    var cardEl = btn.closest('section.card');
    var c = cardEl ? state.cards.get(cardEl.getAttribute('data-server')) : null;
    if (!c || btn.disabled)
      return;
    if (action === 'login')
      doLogin(c);
    else if (action === 'logout')
      openConfirm(c);
    else if (action === 'remove')
      openRemove(c);
    else if (action === 'tools')
      doTools(c);
  }

  function init() {
    document.addEventListener('click', onClick);
    role('add-form').addEventListener('submit', onAddSubmit);
    role('confirm-remove').addEventListener('click', function (ev) {
      if (ev.target === ev.currentTarget)
        closeRemove();
    });
    var dlg = role('confirm');
    dlg.addEventListener('close', onConfirmClosed);
    /* A click on the backdrop (outside the dialog's box) cancels. */
    dlg.addEventListener('click', function (ev) {
      if (ev.target === dlg)
        closeConfirm();
    });
    /* Pasting the URL from `mcpctl status` into this tab only changes the
     * fragment: no reload, so pick the key up here. */
    window.addEventListener('hashchange', function () {
      if (keyFromHash() !== undefined)
        start();
    });
    document.addEventListener('visibilitychange', function () {
      if (!document.hidden)
        loadServers();
    });
    setInterval(tick, 1000);
    start();
  }

  if (document.readyState === 'loading')
    document.addEventListener('DOMContentLoaded', init);
  else
    init();
})();
