"""A fake Microsoft identity platform and Microsoft Graph (subscriptions, and the data behind
notifications), for the e2e tests.

graphrouter's control plane fetches app-only tokens from Entra ID and creates, lists, renews and
deletes Graph subscriptions; its bundled plugins GET the data behind a notification. Microsoft
cannot be reached from the test machines, so FakeGraph plays them all on 127.0.0.1 (standard
library only, plus the `openssl` command for RSA), the way Graph documents them
(../shared/graph-protocol.md sections 1, 3, 6 and 7; Graph's API reference for the data):

- the token endpoint `POST {login_url}/{tenant}/oauth2/v2.0/token`: client credentials with a
  client secret or an RS256 client assertion, really verified (x5t, signature against the
  registered certificate, aud, iss/sub, exp/nbf, jti replay), Entra's `AADSTS...` errors;
  `revoke_tokens()` makes "401, fetch a new token, retry" happen;
- `/v1.0/subscriptions`: create (201 only after a real validation handshake against the
  notificationUrl and another against the lifecycleNotificationUrl, even when both are equal),
  list (paged with `@odata.nextLink`), get, PATCH (renewal, encryption certificate rotation),
  DELETE, reauthorize, with Graph's error shape everywhere;
- Graph's documented habits: clientState is not given back by list and get; 409 for a duplicate;
  400 for an expiration beyond the resource's maximum lifetime (7.3); an expiration under 45
  minutes is raised to 45 minutes (`min_grant_seconds`); an expired subscription is gone (404);
  times have seven fractional digits; Teams resources need a lifecycleNotificationUrl beyond 1 h;
  driveItem and list subscriptions take only `updated`;
- faults on demand: 429 with Retry-After (`throttle`), any status (`fail`), failed handshakes
  (`fail_validation`), subscriptions that expire or are removed, foreign subscriptions;
- Graph's deliveries to the router: change notifications (`notify`, `send`) and lifecycle
  notifications (`lifecycle`);
- the data behind notifications, which the bundled plugins GET (all per tenant, the token's; each
  answer after `set_latency()` seconds, so that tests can make calls overlap; `fail` and
  `throttle` apply, after authentication, as everywhere under /v1.0):
  - Outlook items `/users/{user}/{messages|events|contacts}/{id}` (also under mailFolders/{f},
    calendar, calendars/{c}, contactFolders/{f}), seeded with `put_item`/`delete_item`: every
    property, or with `$select` only those (names case-insensitive) plus id and @odata.etag, the
    @odata.context naming them; 404 ErrorItemNotFound; 403 ErrorAccessDenied for a mailbox that
    `forbid()` closed;
  - Teams chatMessages `/chats/{chat}/messages/{id}` (also `/users/{u}/chats/...`),
    `/teams/{team}/channels/{channel}/messages/{id}[/replies/{reply}]`, seeded with
    `put_chat_message`/`put_channel_message`; 404 NotFound;
  - presence `/communications/presences/{id}` and `/users/{id}/presence` (`set_presence`); 404 NotFound;
  - delta on drives (`/drives/{id}/root/delta`, `/users/{owner}/drive/root/delta`) and SharePoint
    lists (`/sites/{site}/lists/{list}/items/delta`), from a log of changes (`drive_put`,
    `drive_delete`, `list_put`, `list_delete`), as OneDrive documents it: no token enumerates
    the current items; `token=latest` gives only a deltaLink; a deltaLink's token gives what
    changed since, each item once in its latest state, a deleted one as id, parentReference and
    `"deleted": {"state": "deleted"}`; `token=` a time (ODB and SharePoint) gives what changed
    since then; `delta(token='...')` is the same call; pages of `page_size` items ($top
    overrides) linked by @odata.nextLink, the last with @odata.deltaLink for the moment the run
    started, so changes made while a client pages are in its next run; parentReference.path is
    left out (driveItems); `$select` applies; `expire_delta_tokens` turns every token issued so
    far into 410 Gone resyncRequired, with or without a Location for a fresh enumeration.
  Path segments are percent-decoded once (chat and channel ids carry ':' '@' '.'), `name('key')`
  is read as name/key, segment names are case-insensitive; user keys, team, site and list ids
  compare case-insensitively, other ids exactly; `/me/...` is refused (app-only tokens).

Test relaxations (Graph does none of these):
- notificationUrl and lifecycleNotificationUrl may be `http://` when the host is loopback
  (127.0.0.1, localhost, [::1]); other URLs must be https. Calls to https URLs do not check the
  router's certificate unless `client_ca` is given.
- `grant_seconds`: when set to S, creates and PATCHes are granted min(asked, now + S), so a
  renewal falls due within seconds (Graph documents that it may grant less than asked).
- Data endpoints: only what the seeding calls put is there, and nothing is checked against
  Graph's schema: a $select name the item lacks is left out (Graph gives null, or 400 for a name
  the type lacks), other query options ($expand, ...) are ignored; an unknown user is an unknown
  item (Graph: ErrorInvalidUser), and a GUID and a UPN of one user are two mailboxes; a reply is
  found without its parent; only GET. Delta returns exactly the items changed, never their
  ancestors (Graph does unless deltaExcludeParent) nor the root; a folder's deletion is not
  carried to its children; a page is a snapshot of the run's start, the same when asked again;
  a token the fake never issued (or another drive's) gets 400 invalidRequest.

Nothing is printed: every request is recorded (`requests`, `requests_matching`) with its answer
and, for a refused token request, the reason (`note`).
"""

import base64
import datetime
import fractions
import hashlib
import hmac
import http.client
import http.server
import json
import math
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid

__all__ = ["FakeGraph", "OMIT", "Record", "graph_time", "parse_graph_time", "max_lifetime_minutes"]

OMIT = object()  # a value in notify(extra=...): leave that member out of the item

GRAPH_JSON = "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"
AAD_JSON = "application/json; charset=utf-8"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
VALIDATION_PREFIX = "Validation: Testing client application reachability for subscription Request-Id: "
PROPERTIES = {"changeType", "notificationUrl", "lifecycleNotificationUrl", "resource", "expirationDateTime",
              "clientState", "includeResourceData", "encryptionCertificate", "encryptionCertificateId",
              "latestSupportedTlsVersion", "notificationQueryOptions", "notificationUrlAppId",
              "notificationContentType", "applicationId", "creatorId", "id"}
IMMUTABLE = ("lifecycleNotificationUrl", "resource", "changeType", "includeResourceData")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TICKS = 10 ** 7  # Graph's times count 100 ns ticks; kept as integers so that they round-trip


# -- times -----------------------------------------------------------------------------------------
def _now():
    return time.time_ns() // 100


def _fmt(ticks):
    secs, frac = divmod(ticks, TICKS)
    dt = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=secs)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%07d" % frac + "Z"


def graph_time(t):
    """Epoch seconds -> Graph's spelling: UTC, seven fractional digits, Z. A float holds
    microseconds at best, so the seventh digit is 0 (internally the fake keeps 100 ns ticks)."""
    return _fmt(round(fractions.Fraction(t) * 10 ** 6) * 10)


_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)")


def _parse(s):
    """ISO 8601 with 0-7 fractional digits and Z or +hh:mm -> ticks since the epoch, or None."""
    m = _TIME.fullmatch(s) if isinstance(s, str) else None
    if not m:
        return None
    try:
        dt = datetime.datetime(*(int(m[i]) for i in range(1, 7)), tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    offset = 0 if m[8] == "Z" else (1 if m[8][0] == "+" else -1) * (int(m[8][1:3]) * 60 + int(m[8][4:6]))
    return (int(dt.timestamp()) - offset * 60) * TICKS + int((m[7] or "").ljust(7, "0"))


def parse_graph_time(s):
    """An expirationDateTime as Graph accepts it -> epoch seconds (a float: to the microsecond), or None."""
    t = _parse(s)
    return None if t is None else t / TICKS


# -- resources -------------------------------------------------------------------------------------
_U = r"(users/[^/]+|users\('[^']*'\)|me)"
_TEAMS = re.compile(r"(chats|teams|appcatalogs)\b|" + _U + r"/chats\b")
_OUTLOOK = re.compile(_U + r"/(.+/)?(messages|events|contacts)$")
_DRIVE_OR_LIST = re.compile(_U + r"/drive/root\b|drives/[^/]+/root\b|sites/[^/]+/lists/[^/]+$")
_LIFETIMES = [  # (pattern on the lower-cased resource without leading "/" and query, minutes)
    (re.compile(r"communications/presences\b"), 60),
    (re.compile(r"teams/[^/]+/schedule/"), 360),                    # Shifts
    (_TEAMS, 4320),                                                   # chats, channels, messages, teams
    (_DRIVE_OR_LIST, 42300),
    (re.compile(r"security/alerts\b"), 43200),
    (re.compile(r"(users|groups)(/[^/]+|\('[^']*'\))?(/(members|owners))?$"), 41760),
]


def _norm(resource):
    return resource.split("?", 1)[0].strip("/").lower()


def max_lifetime_minutes(resource, include_resource_data=False):
    """The longest subscription Graph grants on `resource` (graph-protocol.md 7.3)."""
    r = _norm(resource)
    if _OUTLOOK.match(r):
        return 1440 if include_resource_data else 10080
    return next((minutes for rx, minutes in _LIFETIMES if rx.match(r)), 4230)


# -- the data behind notifications (what the plugins GET) ------------------------------------------
OUTLOOK_KINDS = ("messages", "events", "contacts")
RESYNC_MESSAGE = ("Resync required. Replace any local items with the server's version (including deletes) if "
                  "you're sure that the service was up to date with your local changes when you last sync'd. "
                  "Upload any local changes that the server doesn't know about.")
_KEYED = re.compile(r"([^()']+)\('((?:[^']|'')*)'\)")                       # messages('AAMk...')
_DELTA_FN = re.compile(r"(?i)delta\(token=(?:'((?:[^']|'')*)'|([^)']*))\)")  # delta(token='...')
_DATA_ROUTES = [  # (segments after v1.0: a literal (lower case; matched case-insensitively, as Graph
    #                 does), "*" an id passed on, "~" an id not checked, a tuple: literals passed on), handler
    (("users", "*", OUTLOOK_KINDS, "*"), "_outlook"),
    (("users", "*", "mailfolders", "~", ("messages",), "*"), "_outlook"),
    (("users", "*", "calendar", ("events",), "*"), "_outlook"),
    (("users", "*", "calendars", "~", ("events",), "*"), "_outlook"),
    (("users", "*", "contactfolders", "~", ("contacts",), "*"), "_outlook"),
    (("chats", "*", "messages", "*"), "_chat_message"),
    (("users", "~", "chats", "*", "messages", "*"), "_chat_message"),
    (("teams", "*", "channels", "*", "messages", "*"), "_channel_message"),
    (("teams", "*", "channels", "*", "messages", "*", "replies", "*"), "_channel_message"),
    (("communications", "presences", "*"), "_presence"),
    (("users", "*", "presence"), "_user_presence"),
    (("drives", "*", "root", "delta"), "_drive_delta"),
    (("users", "*", "drive", "root", "delta"), "_owner_delta"),
    (("sites", "*", "lists", "*", "items", "delta"), "_list_delta"),
]


def _segments(path):
    """A request path as sent -> (its segments after /v1.0, each percent-decoded once, a key in
    OData's spelling `name('key')` split off as a segment of its own; the token of a
    `delta(token='...')` function call, or None)."""
    out, token = [], None
    for raw in path.strip("/").split("/")[1:]:
        s = urllib.parse.unquote(raw)
        fn, keyed = _DELTA_FN.fullmatch(s), _KEYED.fullmatch(s)
        if fn:
            out.append("delta")
            token = fn[2] if fn[1] is None else fn[1].replace("''", "'")
        elif keyed:
            out += [keyed[1], keyed[2].replace("''", "'")]
        else:
            out.append(s)
    return out, token


def _data_route(path):
    """(handler name, [arguments], delta token or None) for a path of the data endpoints, else None."""
    segs, token = _segments(path)
    if segs and segs[0].lower() == "me":
        return "_me", [], None
    for pattern, handler in _DATA_ROUTES:
        if len(pattern) != len(segs):
            continue
        args = []
        for p, s in zip(pattern, segs):
            if p == "*":
                args.append(s)
            elif isinstance(p, tuple) and s.lower() in p:
                args.append(s.lower())
            elif p != "~" and (isinstance(p, tuple) or s.lower() != p):
                break
        else:
            return handler, args, token
    return None


def _copy(obj):
    """A deep copy of JSON data (and a check that it is JSON)."""
    return json.loads(json.dumps(obj))


def _quote(key):
    return urllib.parse.quote(key, safe="")


# -- helpers ---------------------------------------------------------------------------------------
class Record(dict):
    """A dict whose keys also read as attributes: r.status is r["status"]."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(s):
    if not re.fullmatch(r"[A-Za-z0-9_-]*", s) or len(s) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=30)


def _http(method, url, body, headers, timeout, context):
    """One request, no redirects followed: (status, headers, body)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, (u.path or "/") + ("?" + u.query if u.query else ""), body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, and "Expect: 100-continue" as libcurl sends it
    server_version, sys_version, timeout = "FakeGraph", "", 60

    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()   # in this connection's thread, not in accept()

    def log_message(self, *args):
        pass

    def _any(self):
        self.server.fake._serve(self)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_OPTIONS = _any


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads, block_on_close = True, False
    request_queue_size = 128   # the listen backlog; socketserver's 5 resets bursts of connections

    def handle_error(self, request, client_address):   # silently, e.g. a failed TLS handshake
        with self.fake._lock:
            self.fake.errors.append(traceback.format_exc())


# -- the fake --------------------------------------------------------------------------------------
class FakeGraph:
    """Entra ID's token endpoint, Graph's /v1.0/subscriptions and the data behind notifications on one
    local port.

        fg = FakeGraph(); fg.add_tenant(TENANT, APP, secret="s"); ...; fg.close()

    Settable at any time: grant_seconds (None), min_grant_seconds (2700, Graph's 45-minute floor;
    0 turns it off), page_size (subscription lists and delta pages), token_lifetime_s,
    validation_timeout_s (10), notify_timeout_s (30); and set_latency() for the data endpoints.
    """

    def __init__(self, tls=None, token_lifetime_s=3599, page_size=2, client_ca=None):
        self.token_lifetime_s, self.page_size = token_lifetime_s, page_size
        self.grant_seconds, self.min_grant_seconds = None, 45 * 60
        self.validation_timeout_s, self.notify_timeout_s = 10.0, 30.0
        self._lock = threading.RLock()
        self._tmp = tempfile.mkdtemp(prefix="fakegraph-")
        self._tenants = {}    # tenant -> {"app", "secret", "x5t", "pubkey"}
        self._tokens = {}     # access token -> {"tenant", "app", "expires" (ticks), "revoked"}
        self._jtis = set()
        self._subs = {}       # id -> {"tenant", "app", "expires" (ticks), "json"}: the live ones
        self._removed = {}    # the same, once removed, deleted or expired
        self._pages = {}      # $skiptoken -> (tenant, app, [ids still to list])
        self._faults, self._throttles, self._throttled = [], {}, {}
        self._validation_failures = 0
        self._data = {}       # tenant -> the data behind notifications (_tenant_data)
        self._delta_tokens = {}   # token -> {"tenant", "coll", "from", "start", "offset", "select", "top",
        #                           "expired"}: the state of every nextLink and deltaLink issued
        self._latency = 0.0
        self._requests, self._handshakes, self._deliveries = [], [], []
        self.errors = []      # tracebacks of connections that failed below HTTP (TLS, ...)
        self._client_ssl = (ssl.create_default_context(cafile=client_ca) if client_ca
                            else ssl._create_unverified_context())
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls[0], tls[1])
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self._server.server_address[1])
        self.login_url, self.base_url = self.url, self.url + "/v1.0"
        self._closed = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fakegraph", daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop serving and remove the scratch files; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- set-up and faults ---------------------------------------------------------------------
    def add_tenant(self, tenant_id, app_id, secret=None, certificate=None):
        """Register application `app_id` in `tenant_id` with a client secret and/or a certificate
        (path of a PEM X.509 file, read now for its x5t and public key)."""
        t = {"app": app_id, "secret": secret, "x5t": None, "pubkey": None}
        if certificate:
            der = _openssl("x509", "-in", certificate, "-outform", "DER")
            pub = _openssl("x509", "-in", certificate, "-pubkey", "-noout")
            if der.returncode or pub.returncode:
                raise ValueError("openssl cannot read %s: %s" % (certificate, der.stderr.decode()))
            t["x5t"] = _b64url(hashlib.sha1(der.stdout).digest())
            fd, t["pubkey"] = tempfile.mkstemp(dir=self._tmp, suffix=".pub.pem")
            with os.fdopen(fd, "wb") as f:
                f.write(pub.stdout)
        with self._lock:
            self._tenants[tenant_id] = t

    def token_url(self, tenant):
        return "%s/%s/oauth2/v2.0/token" % (self.login_url, tenant)

    def revoke_tokens(self, tenant):
        """Every token issued so far for `tenant` is refused from now on (401)."""
        with self._lock:
            for tok in self._tokens.values():
                tok["revoked"] |= tok["tenant"] == tenant

    def fail(self, method, path_regex, status, body=None, headers=None, times=1, after=0):
        """The next `times` requests with this method (None: any) whose path (without query)
        matches re.search(path_regex) get this answer, checked after authentication, once
        `after` such requests have passed (e.g. the second page of a delta); the token endpoint
        can be failed too. body: a dict (JSON), str or bytes; None gives an error body of
        Graph's (or Entra's) shape with a code fitting the status."""
        with self._lock:
            self._faults.append({"method": method, "rx": re.compile(path_regex), "status": status,
                                 "body": body, "headers": dict(headers or {}), "left": times,
                                 "skip": after})

    def throttle(self, tenant, retry_after_s, times=1):
        """The next `times` Graph API requests of `tenant` get 429 TooManyRequests + Retry-After."""
        with self._lock:
            self._throttles.setdefault(tenant, []).append([retry_after_s, times])

    def throttled_at(self, tenant):
        """[(time.monotonic() when a 429 was answered, its Retry-After in seconds), ...]"""
        with self._lock:
            return list(self._throttled.get(tenant, []))

    def early_requests(self, tenant):
        """The Graph API requests of `tenant` that arrived while a Retry-After was running."""
        windows = self.throttled_at(tenant)
        return [r for r in self.requests_matching(path_regex=r"^/v1\.0/", tenant=tenant)
                if any(t < r.time < t + s for t, s in windows)]

    def fail_validation(self, times=1):
        """The next `times` validation handshakes fail, whatever the router answers."""
        with self._lock:
            self._validation_failures += times

    def add_foreign(self, tenant, notification_url, resource="/users/x/messages", change_type="created",
                    app_id=None):
        """A live subscription not created through the API; app_id None: the tenant's own app, so
        it is listed to it. Returns its id."""
        with self._lock:
            app = app_id or self._tenants[tenant]["app"]
            expires = _now() + max_lifetime_minutes(resource) * 60 * TICKS
            return self._new_sub(tenant, app, expires, {
                "resource": resource, "changeType": change_type, "notificationUrl": notification_url,
                "clientState": secrets.token_urlsafe(32)})["id"]

    def expire(self, sub_id):
        """The subscription expires now, and so no longer exists."""
        with self._lock:
            sub = self._subs[sub_id]
            sub["expires"] = _now()
            sub["json"]["expirationDateTime"] = _fmt(sub["expires"])
            self._purge()

    def remove(self, sub_id):
        """The subscription disappears, as when Graph removes it; nothing is sent."""
        with self._lock:
            self._removed[sub_id] = self._subs.pop(sub_id)

    # -- the data behind notifications -----------------------------------------------------------
    def set_latency(self, seconds):
        """Every answer of the data endpoints (Outlook items, Teams messages, presence, delta; their
        errors too) waits `seconds` before it is sent; 0 (the default) answers at once."""
        with self._lock:
            self._latency = float(seconds)

    def put_item(self, tenant, kind, user, item_id, obj):
        """Create or replace an Outlook item: kind "messages", "events" or "contacts" of mailbox
        `user` (a GUID or a UPN, matched case-insensitively), `obj` its Graph properties. Its
        @odata.etag is obj's own, else a new one at each put."""
        if kind not in OUTLOOK_KINDS:
            raise ValueError("kind must be one of %s" % ", ".join(OUTLOOK_KINDS))
        obj = _copy(obj)
        obj.pop("id", None)
        etag = obj.pop("@odata.etag", None) or 'W/"CQAAABYAAAA%s"' % secrets.token_urlsafe(15)
        with self._lock:
            self._tenant_data(tenant)["items"][kind, user.lower(), item_id] = {"etag": etag, "props": obj}

    def delete_item(self, tenant, kind, user, item_id):
        """The Outlook item is gone (404 from now on); KeyError if there is none."""
        with self._lock:
            del self._tenant_data(tenant)["items"][kind, user.lower(), item_id]

    def forbid(self, tenant, user, forbidden=True):
        """Every Outlook item request on mailbox `user` gets 403 ErrorAccessDenied (forbidden=False:
        not any more)."""
        with self._lock:
            denied = self._tenant_data(tenant)["forbidden"]
            (denied.add if forbidden else denied.discard)(user.lower())

    def put_chat_message(self, tenant, chat, msg_id, obj):
        """Create or replace the chatMessage `msg_id` of chat `chat`; obj as Graph returns it (id and
        chatId are filled in when absent)."""
        obj = dict(_copy(obj), id=msg_id)
        obj.setdefault("chatId", chat)
        with self._lock:
            self._tenant_data(tenant)["chats"][chat, msg_id] = obj

    def put_channel_message(self, tenant, team, channel, msg_id, obj, reply_to=None):
        """Create or replace the chatMessage `msg_id` of a channel, or with reply_to, the reply
        `msg_id` to the channel's message `reply_to`. id, channelIdentity and replyToId are filled
        in when absent. Team ids are matched case-insensitively (GUIDs), channel ids exactly."""
        obj = dict(_copy(obj), id=msg_id)
        obj.setdefault("channelIdentity", {"teamId": team, "channelId": channel})
        if reply_to is not None:
            obj.setdefault("replyToId", reply_to)
        with self._lock:
            self._tenant_data(tenant)["channels"][team.lower(), channel, reply_to, msg_id] = obj

    def set_presence(self, tenant, user, availability, activity):
        """The presence of `user` (its object id; matched case-insensitively)."""
        with self._lock:
            self._tenant_data(tenant)["presence"][user.lower()] = {
                "id": user, "availability": availability, "activity": activity}

    def add_drive(self, tenant, drive_id, owner_user=None):
        """A drive (empty, or kept if it exists), also reachable as /users/{owner_user}/drive."""
        with self._lock:
            d = self._tenant_data(tenant)
            d["drives"].setdefault(drive_id, {"kind": "drive", "id": drive_id, "log": [], "current": {}})
            if owner_user is not None:
                d["owners"][owner_user.lower()] = drive_id

    def drive_put(self, tenant, drive_id, item):
        """Create or replace a driveItem (a dict with at least id and name; parentReference.driveId
        and lastModifiedDateTime (now) are filled in when absent); one change in the drive's log."""
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("id", "name")):
            raise ValueError("a driveItem needs an id and a name")
        item = _copy(item)
        item["parentReference"] = dict(item.get("parentReference") or {})
        item["parentReference"].setdefault("driveId", drive_id)
        with self._lock:
            self._change(self._tenant_data(tenant)["drives"][drive_id], item)

    def drive_delete(self, tenant, drive_id, item_id):
        """The driveItem is deleted: one change in the drive's log; KeyError if it does not exist."""
        with self._lock:
            self._change(self._tenant_data(tenant)["drives"][drive_id], item_id, deleted=True)

    def expire_delta_tokens(self, tenant, drive_id, location=True):
        """Every token issued so far for the drive (in deltaLinks and nextLinks) gets 410 Gone
        resyncRequired from now on, with a Location header for a fresh enumeration if `location`."""
        with self._lock:
            self._expire(self._tenant_data(tenant)["drives"][drive_id], location)

    def add_list(self, tenant, site, list_id):
        """A SharePoint list (empty, or kept if it exists); site and list matched case-insensitively."""
        with self._lock:
            self._tenant_data(tenant)["lists"].setdefault((site.lower(), list_id.lower()), {
                "kind": "list", "id": list_id, "log": [], "current": {}})

    def list_put(self, tenant, site, list_id, item):
        """Create or replace a listItem (a dict with at least id; lastModifiedDateTime (now) is
        filled in when absent); one change in the list's log."""
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ValueError("a listItem needs an id")
        with self._lock:
            self._change(self._tenant_data(tenant)["lists"][site.lower(), list_id.lower()], _copy(item))

    def list_delete(self, tenant, site, list_id, item_id):
        """The listItem is deleted: one change in the list's log; KeyError if it does not exist."""
        with self._lock:
            self._change(self._tenant_data(tenant)["lists"][site.lower(), list_id.lower()], item_id, deleted=True)

    def expire_list_delta_tokens(self, tenant, site, list_id, location=True):
        """expire_delta_tokens() for a list."""
        with self._lock:
            self._expire(self._tenant_data(tenant)["lists"][site.lower(), list_id.lower()], location)

    # -- inspection ----------------------------------------------------------------------------
    @property
    def requests(self):
        """Every request answered: Records of time (time.monotonic() at arrival), method, path,
        query, headers (lower-case names), body, status, tenant, note."""
        with self._lock:
            return [Record(r) for r in self._requests]

    def requests_matching(self, method=None, path_regex=None, tenant=None):
        return [r for r in self.requests if (method is None or r.method == method)
                and (path_regex is None or re.search(path_regex, r.path))
                and (tenant is None or r.tenant == tenant)]

    @property
    def handshakes(self):
        """The validation handshakes: Records of time, url, token, status, content_type, body,
        ok, error ("timeout", "wrong answer", "forced failure", or a connection error)."""
        with self._lock:
            return [Record(h) for h in self._handshakes]

    @property
    def deliveries(self):
        """What send(), notify() and lifecycle() posted: Records of time, url, body, status, error."""
        with self._lock:
            return [Record(d) for d in self._deliveries]

    def subscriptions(self, tenant=None):
        """Copies of the live subscriptions, with their clientState and a "tenant" member."""
        with self._lock:
            self._purge()
            return [dict(s["json"], tenant=s["tenant"]) for s in self._subs.values()
                    if tenant in (None, s["tenant"])]

    def client_state(self, sub_id):
        """The secret the subscription was created with (live, expired or removed)."""
        with self._lock:
            return self._find(sub_id)["json"]["clientState"]

    # -- deliveries to the router --------------------------------------------------------------
    def send(self, url, payload):
        """POST a JSON payload to `url` as Graph delivers; the HTTP status (0: no answer)."""
        d = Record(time=time.monotonic(), url=url, body=payload, status=0, error=None)
        try:
            d["status"] = _http("POST", url, json.dumps(payload).encode(),
                                {"Content-Type": "application/json; charset=utf-8"},
                                self.notify_timeout_s, self._client_ssl)[0]
        except OSError as e:
            d["error"] = repr(e)
        with self._lock:
            self._deliveries.append(d)
        return d["status"]

    def notify(self, sub_id, change_type="created", resource=None, client_state=None, resource_data=None,
               extra=None):
        """POST one change notification of the subscription to its notificationUrl. Defaults: the
        subscription's clientState, a new item under its resource. `extra` merges members into
        the item (a value OMIT removes one). Returns the HTTP status."""
        with self._lock:
            sub = self._find(sub_id)
            j, tenant = dict(sub["json"]), sub["tenant"]
        if resource is None:
            resource = j["resource"].split("?", 1)[0].strip("/")
            if re.search(r"(messages|events|contacts)$", resource, re.I):
                resource += "/AAMkAGUwNjQ4ZjIx%sAAA=" % secrets.token_hex(4)
        if resource_data is None:
            segs = resource.split("/")
            kind = {"messages": "Message", "events": "Event", "contacts": "Contact", "users": "User",
                    "groups": "Group", "presences": "presence"}.get(segs[-2].lower() if len(segs) > 1 else "")
            resource_data = {"@odata.type": "#Microsoft.Graph." + (kind or "Entity"), "@odata.id": resource,
                             "id": segs[-1]}
        item = {"subscriptionId": sub_id, "subscriptionExpirationDateTime": j["expirationDateTime"],
                "changeType": change_type, "resource": resource, "resourceData": resource_data,
                "clientState": j["clientState"] if client_state is None else client_state, "tenantId": tenant}
        item.update(extra or {})
        return self.send(j["notificationUrl"], {"value": [{k: v for k, v in item.items() if v is not OMIT}]})

    def lifecycle(self, sub_id, event, client_state=None):
        """POST a lifecycle notification to the lifecycleNotificationUrl (else the notificationUrl);
        for "subscriptionRemoved" the subscription is removed first. Returns the HTTP status."""
        with self._lock:
            if event == "subscriptionRemoved" and sub_id in self._subs:
                self._removed[sub_id] = self._subs.pop(sub_id)
            sub = self._find(sub_id)
            j, tenant = dict(sub["json"]), sub["tenant"]
        item = {"subscriptionId": sub_id, "subscriptionExpirationDateTime": j["expirationDateTime"],
                "tenantId": tenant, "clientState": j["clientState"] if client_state is None else client_state,
                "lifecycleEvent": event}
        return self.send(j["lifecycleNotificationUrl"] or j["notificationUrl"], {"value": [item]})

    # -- state (with the lock held) ------------------------------------------------------------
    def _purge(self):
        now = _now()
        for sid in [sid for sid, s in self._subs.items() if s["expires"] <= now]:
            self._removed[sid] = self._subs.pop(sid)

    def _find(self, sub_id):
        self._purge()
        return self._subs[sub_id] if sub_id in self._subs else self._removed[sub_id]

    def _visible(self, ctx, sub_id):
        self._purge()
        s = self._subs.get(sub_id)
        return s if s and (s["tenant"], s["app"]) == (ctx.tenant, ctx.app) else None

    def _new_sub(self, tenant, app, expires, body):
        j = {"id": str(uuid.uuid4()), "resource": body["resource"], "applicationId": app,
             "changeType": body["changeType"], "clientState": body.get("clientState"),
             "notificationUrl": body["notificationUrl"],
             "notificationQueryOptions": body.get("notificationQueryOptions"),
             "lifecycleNotificationUrl": body.get("lifecycleNotificationUrl"),
             "expirationDateTime": _fmt(expires),
             "creatorId": str(uuid.uuid5(uuid.NAMESPACE_URL, "fakegraph-creator:" + app)),
             "includeResourceData": bool(body.get("includeResourceData")),
             "latestSupportedTlsVersion": body.get("latestSupportedTlsVersion") or "v1_2",
             "encryptionCertificate": body.get("encryptionCertificate"),
             "encryptionCertificateId": body.get("encryptionCertificateId"),
             "notificationUrlAppId": body.get("notificationUrlAppId"),
             "notificationContentType": body.get("notificationContentType")}
        self._subs[j["id"]] = {"tenant": tenant, "app": app, "expires": expires, "json": j}
        return j

    def _duplicate(self, tenant, body):
        def key(j):
            return _norm(j["resource"]), frozenset(c.strip() for c in j["changeType"].split(",")), \
                j["notificationUrl"]
        self._purge()
        return next((sid for sid, s in self._subs.items()
                     if s["tenant"] == tenant and key(s["json"]) == key(body)), None)

    def _tenant_data(self, tenant):
        return self._data.setdefault(tenant, {
            "items": {},        # (kind, user lower-cased, id) -> {"etag", "props"}
            "forbidden": set(),  # users lower-cased
            "chats": {},        # (chat, id) -> chatMessage
            "channels": {},     # (team lower-cased, channel, id replied to or None, id) -> chatMessage
            "presence": {},     # user lower-cased -> presence
            "drives": {},       # id -> {"kind": "drive", "id", "log": [version...], "current": {id: version}}
            "owners": {},       # user lower-cased -> drive id
            "lists": {}})       # (site, list), lower-cased -> collection of kind "list"

    @staticmethod
    def _change(coll, item, deleted=False):
        """Append one change to a drive's or list's log: the item's new version (a dict), or the
        deletion of the item of this id, which keeps only its id and parentReference."""
        if deleted:
            old = coll["current"].get(item)
            if old is None or old["deleted"]:
                raise KeyError(item)
            version = {"id": item, "deleted": True,
                       "item": {k: old["item"][k] for k in ("id", "parentReference") if k in old["item"]}}
        else:
            item.setdefault("lastModifiedDateTime",
                            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            version = {"id": item["id"], "deleted": False, "item": item}
        version["time"] = _now()
        coll["log"].append(version)
        coll["current"][version["id"]] = version

    @staticmethod
    def _changes(coll, since, start):
        """The versions a delta run returns: of each item changed in log[since:start] its last one,
        ordered by that change; since None: a full enumeration of log[:start], deleted items left out."""
        latest = {}
        for v in coll["log"][since or 0:start]:
            latest.pop(v["id"], None)   # re-inserted: the dict stays in last-change order
            latest[v["id"]] = v
        return [v for v in latest.values() if since is not None or not v["deleted"]]

    def _expire(self, coll, location):
        for st in self._delta_tokens.values():
            if st["coll"] is coll:
                st["expired"] = {"location": bool(location)}

    def _issue(self, tenant, coll, state):
        token = secrets.token_urlsafe(24)
        self._delta_tokens[token] = dict(state, tenant=tenant, coll=coll, expired=None)
        return token

    # -- HTTP ----------------------------------------------------------------------------------
    def _serve(self, h):
        u = urllib.parse.urlsplit(h.path)
        rec = Record(time=time.monotonic(), method=h.command, path=u.path,
                     query=dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True)),
                     headers={k.lower(): v for k, v in h.headers.items()}, body=None, status=None,
                     tenant=None, note=None)
        ctx = _Ctx(rec)
        try:
            raw = self._read_body(h, rec.headers)
            rec["body"] = raw or None
            status, headers, body, ctype = self._dispatch(ctx, raw)
        except Exception:   # a bug in the fake: answer 500, keep the traceback
            rec["note"] = traceback.format_exc()
            status, headers, body, ctype = self._gerr(ctx, 500, "InternalServerError", "The fake failed.")
        body = json.dumps(body).encode() if isinstance(body, (dict, list)) else \
            body.encode() if isinstance(body, str) else body or b""
        rec["status"] = status
        with self._lock:
            self._requests.append(rec)   # before answering: whoever has the answer sees the record
        try:
            h.send_response(status)
            if status != 204:   # a 204 has neither (RFC 9110)
                h.send_header("Content-Type", ctype)
                h.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            h.close_connection = True

    @staticmethod
    def _read_body(h, headers):
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass   # trailers
                    return out
                out += h.rfile.read(size)
                h.rfile.readline()
        n = int(headers.get("content-length") or 0)
        return h.rfile.read(n) if n else b""

    def _dispatch(self, ctx, raw):
        m = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", ctx.rec.path)
        if m:
            ctx.rec["tenant"] = m[1]
            return self._token(ctx, m[1], raw)
        if ctx.rec.path == "/v1.0" or ctx.rec.path.startswith("/v1.0/"):
            return self._graph(ctx, raw)
        return self._gerr(ctx, 404, "UnknownError", "No HTTP resource was found that matches the request URI.")

    def _fault(self, method, path):
        with self._lock:
            for f in self._faults:
                if f["method"] in (None, "*", method) and f["rx"].search(path):
                    if f["skip"] > 0:
                        f["skip"] -= 1
                        continue
                    f["left"] -= 1
                    if f["left"] <= 0:
                        self._faults.remove(f)
                    return f
        return None

    # -- the identity platform -----------------------------------------------------------------
    @staticmethod
    def _aad(status, error, code, description):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        return status, {}, {
            "error": error, "error_codes": [code], "timestamp": stamp, "trace_id": trace, "correlation_id": corr,
            "error_description": "AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s"
                                 % (code, description, trace, corr, stamp),
            "error_uri": "https://login.microsoftonline.com/error?code=%d" % code}, AAD_JSON

    def _token(self, ctx, tenant, raw):
        rec = ctx.rec
        f = self._fault(rec.method, rec.path)
        if f:
            if f["body"] is not None:
                return f["status"], f["headers"], f["body"], AAD_JSON
            server = f["status"] >= 500
            answer = self._aad(f["status"], "temporarily_unavailable" if server else "invalid_request",
                               90033 if server else 90014, "Failure injected by the test.")
            return (answer[0], f["headers"]) + answer[2:]
        if rec.method != "POST":
            return self._aad(400, "invalid_request", 900561, "The endpoint only accepts POST requests.")
        form = {}
        if rec.headers.get("content-type", "").lower().startswith("application/x-www-form-urlencoded"):
            form = dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        rec["body"] = form
        with self._lock:
            t = self._tenants.get(tenant)
        grant, cid, scope = form.get("grant_type"), form.get("client_id"), form.get("scope")
        secret, assertion = form.get("client_secret"), form.get("client_assertion")
        if t is None:
            return self._aad(400, "invalid_request", 90002, "Tenant '%s' not found. Check to make sure you have "
                             "the correct tenant ID and are signing into the correct cloud." % tenant)
        if grant is None:
            return self._aad(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'grant_type'.")
        if grant != "client_credentials":
            return self._aad(400, "unsupported_grant_type", 70003,
                             "The app requested an unsupported grant type '%s'." % grant)
        if cid != t["app"]:   # Entra's error here is unauthorized_client
            return self._aad(400, "unauthorized_client", 700016, "Application with identifier '%s' was not found "
                             "in the directory '%s'. This can happen if the application has not been installed "
                             "by the administrator of the tenant or consented to by any user in the tenant. You "
                             "may have sent your authentication request to the wrong tenant." % (cid, tenant))
        if scope != self.url + "/.default":
            return self._aad(400, "invalid_scope", 1002012, "The provided value for scope %s is not valid. "
                             "Client credential flows must have a scope value with /.default suffixed to the "
                             "resource identifier (application ID URI)." % scope)
        if secret is not None and assertion is not None:
            return self._aad(400, "invalid_request", 90014, "Send client_secret or client_assertion, not both.")
        if secret is not None:
            if t["secret"] is None or not hmac.compare_digest(secret.encode(), t["secret"].encode()):
                rec["note"] = "invalid client secret"
                return self._aad(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the "
                                 "secret being sent in the request is the client secret value, not the client "
                                 "secret ID, for a secret added to app '%s'." % t["app"])
        elif assertion is not None:
            reason = ("client_assertion_type must be " + ASSERTION_TYPE
                      if form.get("client_assertion_type") != ASSERTION_TYPE
                      else self._check_assertion(t, tenant, assertion))
            if reason:
                rec["note"] = reason
                return self._aad(401, "invalid_client", 700027,
                                 "Client assertion failed signature validation. [Reason - %s]" % reason)
        else:
            return self._aad(401, "invalid_client", 7000218, "The request body must contain the following "
                             "parameter: 'client_assertion' or 'client_secret'.")
        token, n = secrets.token_urlsafe(48), self.token_lifetime_s
        with self._lock:
            self._tokens[token] = {"tenant": tenant, "app": t["app"], "revoked": False,
                                   "expires": _now() + round(n * TICKS)}
        return 200, {}, {"token_type": "Bearer", "expires_in": n, "ext_expires_in": n,
                         "access_token": token}, AAD_JSON

    def _check_assertion(self, t, tenant, jwt):
        """Why Entra would refuse this client assertion, or None."""
        parts = jwt.split(".")
        if len(parts) != 3:
            return "The assertion is not a JWS of three segments."
        try:
            header, claims = (json.loads(_b64url_decode(p)) for p in parts[:2])
            sig = _b64url_decode(parts[2])
        except ValueError:
            return "The assertion is not base64url-encoded JSON."
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return "The assertion's header or payload is not a JSON object."
        if header.get("alg") != "RS256" or header.get("typ", "JWT") != "JWT":
            return "Unsupported alg %r or typ %r." % (header.get("alg"), header.get("typ"))
        if t["x5t"] is None or header.get("x5t") != t["x5t"]:
            return "The key was not found., Thumbprint of key used by client: %r" % header.get("x5t")
        fd, sigfile = tempfile.mkstemp(dir=self._tmp, suffix=".sig")
        with os.fdopen(fd, "wb") as f:
            f.write(sig)
        try:
            p = _openssl("dgst", "-sha256", "-verify", t["pubkey"], "-signature", sigfile,
                         data=(parts[0] + "." + parts[1]).encode())
        finally:
            os.unlink(sigfile)
        if p.returncode != 0:
            return "The signature is not valid for the registered certificate."
        if claims.get("aud") != self.token_url(tenant):
            return "Wrong audience %r; expected %r." % (claims.get("aud"), self.token_url(tenant))
        if claims.get("iss") != t["app"] or claims.get("sub") != t["app"]:
            return "iss and sub must both be the application id %r." % t["app"]
        now, exp, nbf = time.time(), claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            return "The exp claim is missing or not a number."
        if exp <= now:
            return "The assertion has expired (exp %s)." % exp
        if exp > now + 86400:
            return "The assertion's exp is more than 24 hours ahead."
        if nbf is not None and (not isinstance(nbf, (int, float)) or nbf > now + 300):
            return "The assertion is not yet valid (nbf %s)." % nbf
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "The jti claim is missing."
        with self._lock:
            if jti in self._jtis:
                return "The jti %r was already used (replay)." % jti
            self._jtis.add(jti)
        return None

    # -- Graph ---------------------------------------------------------------------------------
    _ERRORS = {400: ("BadRequest", "Bad request."),
               401: ("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
               403: ("Forbidden", "The number of subscriptions has exceeded the quota for this resource."),
               404: ("ResourceNotFound", "The object was not found."),
               409: ("ExtensionError", "Conflict."),
               410: ("resyncRequired", RESYNC_MESSAGE),
               429: ("TooManyRequests", "Too many requests"),
               500: ("InternalServerError", "Internal server error."),
               502: ("BadGateway", "Bad gateway."),
               503: ("ServiceUnavailable", "Service unavailable."),
               504: ("GatewayTimeout", "Gateway timeout.")}

    def _gerr(self, ctx, status, code, message, headers=None):
        inner = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                 "request-id": ctx.request_id, "client-request-id": ctx.client_request_id}
        return status, dict(ctx.ids(), **(headers or {})), \
            {"error": {"code": code, "message": message, "innerError": inner}}, "application/json"

    def _bad(self, ctx, message, code="InvalidRequest"):
        return self._gerr(ctx, 400, code, message)

    def _graph(self, ctx, raw):
        route = _data_route(ctx.rec.path)
        answer = self._graph_answer(ctx, raw, route)
        with self._lock:
            latency = self._latency
        if route and latency > 0:
            time.sleep(latency)   # without the lock: concurrent calls overlap
        return answer

    def _graph_answer(self, ctx, raw, route):
        rec = ctx.rec
        m = re.fullmatch(r"(?i)bearer +(\S+)", rec.headers.get("authorization", "").strip())
        with self._lock:
            tok = self._tokens.get(m[1]) if m else None
        if tok is None or tok["revoked"] or tok["expires"] <= _now():
            return self._gerr(ctx, 401, "InvalidAuthenticationToken",
                              "Access token has expired or is not yet valid." if m else "Access token is empty.",
                              {"WWW-Authenticate": 'Bearer realm="", authorization_uri="%s/common/oauth2/authorize",'
                               ' client_id="00000003-0000-0000-c000-000000000000"' % self.login_url})
        ctx.tenant, ctx.app = tok["tenant"], tok["app"]
        rec["tenant"] = ctx.tenant
        with self._lock:
            pending = self._throttles.get(ctx.tenant)
            if pending:
                retry = pending[0][0]
                pending[0][1] -= 1
                if pending[0][1] <= 0:
                    pending.pop(0)
                self._throttled.setdefault(ctx.tenant, []).append((time.monotonic(), retry))
                return self._gerr(ctx, 429, "TooManyRequests", "Too many requests",
                                  {"Retry-After": str(math.ceil(retry))})
        f = self._fault(rec.method, rec.path)
        if f and f["body"] is None:
            return self._gerr(ctx, f["status"], *self._ERRORS.get(f["status"], ("UnknownError", "")), f["headers"])
        if f:
            return f["status"], dict(ctx.ids(), **f["headers"]), f["body"], "application/json"
        body = None
        if raw:
            try:
                if not rec.headers.get("content-type", "").lower().startswith("application/json"):
                    raise ValueError
                body = rec["body"] = json.loads(raw)
            except ValueError:
                return self._gerr(ctx, 400, "BadRequest", "Unable to read JSON request payload. Please ensure "
                                  "Content-Type header is set and payload is of valid JSON format.")
        if route:
            return self._data_answer(ctx, route)
        path = rec.path.rstrip("/")
        m = re.fullmatch(r"/v1\.0/subscriptions(?:/([^/]+)(/reauthorize)?)?", path)
        if not m:
            return self._gerr(ctx, 404, "UnknownError",
                              "Resource not found for the segment '%s'." % path.split("/")[-1])
        sid, reauth = m[1], m[2]
        allowed = ["POST"] if reauth else ["GET", "PATCH", "DELETE"] if sid else ["GET", "POST"]
        if rec.method not in allowed:
            return self._gerr(ctx, 405, "BadRequest", "The HTTP method '%s' is not allowed." % rec.method,
                              {"Allow": ", ".join(allowed)})
        if rec.method in ("POST", "PATCH") and not reauth and not isinstance(body, dict):
            return self._bad(ctx, "Empty Payload. JSON content expected.", "BadRequest")
        if not sid:
            return self._list(ctx) if rec.method == "GET" else self._create(ctx, body)
        if rec.method == "PATCH":
            return self._patch(ctx, sid, body)
        with self._lock:
            sub = self._visible(ctx, sid)
            if sub is None:
                return self._gerr(ctx, 404, "ResourceNotFound", "The object was not found.")
            if rec.method == "GET":
                return 200, ctx.ids(), self._entity(sub), GRAPH_JSON
            if rec.method == "DELETE":
                self._removed[sid] = self._subs.pop(sid)
            return 204, ctx.ids(), b"", ""   # DELETE, reauthorize

    def _entity(self, sub, secret=False):
        j = dict(sub["json"], clientState=sub["json"]["clientState"] if secret else None)
        return dict({"@odata.context": self.base_url + "/$metadata#subscriptions/$entity"}, **j)

    def _list(self, ctx):
        skip = ctx.rec.query.get("$skiptoken")
        with self._lock:
            self._purge()
            if skip is None:
                ids = [i for i, s in self._subs.items() if (s["tenant"], s["app"]) == (ctx.tenant, ctx.app)]
            elif self._pages.get(skip, (None, None))[:2] == (ctx.tenant, ctx.app):
                ids = [i for i in self._pages[skip][2] if i in self._subs]
            else:
                return self._bad(ctx, "Invalid $skiptoken.", "BadRequest")
            n = max(1, self.page_size)
            out = {"@odata.context": self.base_url + "/$metadata#subscriptions",
                   "value": [dict(self._subs[i]["json"], clientState=None) for i in ids[:n]]}
            if ids[n:]:   # tokens stay valid: a page can be asked again after a 429 or a 5xx
                token = secrets.token_urlsafe(24)
                self._pages[token] = (ctx.tenant, ctx.app, ids[n:])
                out["@odata.nextLink"] = self.base_url + "/subscriptions?$skiptoken=" + token
        return 200, ctx.ids(), out, GRAPH_JSON

    def _expiry(self, ctx, value, resource, rich):
        """(granted ticks, None), or (None, an error answer) for an asked expirationDateTime."""
        asked, now = _parse(value), _now()
        if asked is None:
            return None, self._bad(ctx, "Cannot convert the literal '%s' to the expected type "
                                   "'Edm.DateTimeOffset'." % value, "BadRequest")
        if asked <= now:
            return None, self._bad(ctx, "Subscription expiration can only be in the future.")
        limit = max_lifetime_minutes(resource, rich)
        if asked > now + (limit * 60 + 300) * TICKS:   # 5 minutes' slack
            return None, self._bad(ctx, "Subscription expiration can only be %d minutes in the future." % limit)
        granted = max(asked, now + round(self.min_grant_seconds * TICKS)) if self.min_grant_seconds else asked
        if self.grant_seconds is not None:
            granted = min(granted, now + round(self.grant_seconds * TICKS))
        return granted, None

    def _check_certificate(self, ctx, body):
        cert, cid = body.get("encryptionCertificate"), body.get("encryptionCertificateId")
        if not isinstance(cert, str) or not isinstance(cid, str) or not cert or not cid:
            return self._bad(ctx, "encryptionCertificate and encryptionCertificateId are both required.")
        if len(cid) > 128:
            return self._bad(ctx, "encryptionCertificateId cannot be more than 128 characters.")
        try:
            der = base64.b64decode(cert, validate=True)
        except ValueError:
            der = b""
        if not der or _openssl("x509", "-inform", "DER", "-noout", data=der).returncode != 0:
            return self._bad(ctx, "The encryptionCertificate is not a base64-encoded DER X.509 certificate.")
        return None

    def _unknown_property(self, ctx, body):
        for k in body:
            if k not in PROPERTIES and not k.startswith("@odata."):
                return self._bad(ctx, "The property '%s' does not exist on type 'microsoft.graph.subscription'. "
                                 "Make sure to only use property names that are defined by the type." % k,
                                 "BadRequest")
        return None

    def _create_errors(self, ctx, body):
        """The answers that refuse this create, first one first (checked lazily)."""
        yield self._unknown_property(ctx, body)
        for k in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not isinstance(body.get(k), str) or not body[k]:
                yield self._bad(ctx, "The subscription property '%s' is required." % k)
        changes, resource = [c.strip() for c in body["changeType"].split(",")], _norm(body["resource"])
        rich, cs, tls = body.get("includeResourceData", False), body.get("clientState"), \
            body.get("latestSupportedTlsVersion")
        if not set(changes) <= {"created", "updated", "deleted"}:
            yield self._bad(ctx, "Invalid changeType '%s'; allowed: created, updated, deleted." % body["changeType"])
        if _DRIVE_OR_LIST.match(resource) and changes != ["updated"]:
            yield self._bad(ctx, "Only the 'updated' changeType is supported for this resource.")
        if cs is not None and (not isinstance(cs, str) or len(cs) > 128):
            yield self._bad(ctx, "ClientState cannot be more than 128 characters.")
        if not isinstance(rich, bool):
            yield self._bad(ctx, "includeResourceData must be a boolean.", "BadRequest")
        if tls not in (None, "v1_0", "v1_1", "v1_2", "v1_3"):
            yield self._bad(ctx, "Invalid latestSupportedTlsVersion '%s'." % tls)
        for k in ("notificationUrl", "lifecycleNotificationUrl"):
            if body.get(k) is not None and not self._url_ok(body[k]):
                yield self._bad(ctx, "The %s '%s' is not a valid https URL." % (k, body[k]))
        if rich:
            yield self._check_certificate(ctx, body)
        asked = _parse(body["expirationDateTime"])
        if (asked and _TEAMS.match(resource) and not body.get("lifecycleNotificationUrl")
                and asked > _now() + 3600 * TICKS):
            yield self._bad(ctx, "Subscription creation failed: lifecycleNotificationUrl is a required property "
                            "for subscription creation on this resource when the expirationDateTime value is set "
                            "to greater than 1 hour")
        yield self._expiry(ctx, body["expirationDateTime"], body["resource"], rich)[1]
        yield self._conflict(ctx, body)

    def _create(self, ctx, body):
        err = next(filter(None, self._create_errors(ctx, body)), None)
        if err:
            return err
        for url in filter(None, (body["notificationUrl"], body.get("lifecycleNotificationUrl"))):
            hs = self._handshake(url)
            if not hs.ok:
                return self._gerr(ctx, 400, "ValidationError", "Subscription validation request timed out."
                                  if hs.error == "timeout" else "Subscription validation request failed. "
                                  "Notification endpoint must respond with 200 OK to validation request.")
        granted, err = self._expiry(ctx, body["expirationDateTime"], body["resource"],
                                    body.get("includeResourceData", False))
        with self._lock:
            err = err or self._conflict(ctx, body)   # again: the handshakes took time
            if err:
                return err
            sub = self._subs[self._new_sub(ctx.tenant, ctx.app, granted, body)["id"]]
            return 201, ctx.ids(), self._entity(sub, secret=True), GRAPH_JSON

    @staticmethod
    def _url_ok(url):
        u = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        return bool(u and u.hostname and (u.scheme == "https" or u.scheme == "http" and u.hostname in LOOPBACK))

    def _conflict(self, ctx, body):
        with self._lock:
            dup = self._duplicate(ctx.tenant, body)
        if dup is None:
            return None
        return self._gerr(ctx, 409, "ExtensionError",
                          "Subscription Id %s already exists for the requested combination" % dup)

    def _handshake(self, url):
        token = VALIDATION_PREFIX + str(uuid.uuid4())
        quoted = re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), urllib.parse.quote_plus(token))  # "%3a", as Graph
        hs = Record(time=time.monotonic(), url=url + ("&" if "?" in url else "?") + "validationToken=" + quoted,
                    token=token, status=None, content_type=None, body=None, ok=False, error=None)
        try:
            status, headers, body = _http("POST", hs.url, b"", {"Content-Type": "text/plain; charset=utf-8"},
                                          self.validation_timeout_s, self._client_ssl)
            ctype = headers.get("content-type", "")
            ok = status == 200 and ctype.lower().startswith("text/plain") and body == token.encode()
            hs.update(status=status, content_type=ctype, body=body.decode("utf-8", "replace"), ok=ok,
                      error=None if ok else "wrong answer")
        except TimeoutError:
            hs["error"] = "timeout"
        except OSError as e:
            hs["error"] = repr(e)
        with self._lock:
            if self._validation_failures > 0:
                self._validation_failures -= 1
                hs.update(ok=False, error="forced failure")
            self._handshakes.append(hs)
        return hs

    def _patch(self, ctx, sid, body):
        fixed = next((k for k in body if k in IMMUTABLE), None)
        if fixed:
            return self._bad(ctx, "Subscription property '%s' cannot be updated." % fixed)
        rotate = "encryptionCertificate" in body or "encryptionCertificateId" in body
        err = self._unknown_property(ctx, body) or (rotate and self._check_certificate(ctx, body))
        if err:
            return err
        with self._lock:
            sub = self._visible(ctx, sid)
            if sub is None:
                return self._gerr(ctx, 404, "ResourceNotFound", "The object was not found.")
            j = sub["json"]
            if "expirationDateTime" in body:
                granted, err = self._expiry(ctx, body["expirationDateTime"], j["resource"], j["includeResourceData"])
                if err:
                    return err
                sub["expires"], j["expirationDateTime"] = granted, _fmt(granted)
            if rotate:
                j["encryptionCertificate"] = body["encryptionCertificate"]
                j["encryptionCertificateId"] = body["encryptionCertificateId"]
            return 200, ctx.ids(), self._entity(sub), GRAPH_JSON

    # -- Graph: the data behind notifications --------------------------------------------------
    def _data_answer(self, ctx, route):
        handler, args, token = route
        if handler == "_me":
            return self._bad(ctx, "/me request is only valid with delegated authentication flow.", "BadRequest")
        if ctx.rec.method != "GET":
            return self._gerr(ctx, 405, "BadRequest", "The HTTP method '%s' is not allowed." % ctx.rec.method,
                              {"Allow": "GET"})
        if handler.endswith("_delta"):
            return getattr(self, handler)(ctx, token, *args)
        return getattr(self, handler)(ctx, *args)

    @staticmethod
    def _select(select, props):
        """$select (a comma list, names matched case-insensitively) applied to props -> (the selected
        properties the item has, the names in its spelling), or (props, None) without $select."""
        if not select or not select.strip():
            return props, None
        spelling, names = {k.lower(): k for k in props}, []
        for name in filter(None, (n.strip() for n in select.split(","))):
            name = spelling.get(name.lower(), name)
            if name.lower() not in (n.lower() for n in names):
                names.append(name)
        return {n: props[n] for n in names if n in props}, names

    @staticmethod
    def _with(head, obj):
        """head's members first, then obj's others."""
        out = dict(head)
        out.update((k, v) for k, v in obj.items() if k not in out)
        return out

    def _outlook(self, ctx, user, kind, item_id):
        with self._lock:
            d = self._tenant_data(ctx.tenant)
            denied, item = user.lower() in d["forbidden"], d["items"].get((kind, user.lower(), item_id))
        if denied:
            return self._gerr(ctx, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if item is None:
            return self._gerr(ctx, 404, "ErrorItemNotFound", "The specified object was not found in the store.")
        props, names = self._select(ctx.rec.query.get("$select"), item["props"])
        context = "%s/$metadata#users('%s')/%s%s/$entity" % (self.base_url, _quote(user), kind,
                                                            "" if names is None else "(%s)" % ",".join(names))
        return 200, ctx.ids(), self._with({"@odata.context": context, "@odata.etag": item["etag"], "id": item_id},
                                          props), GRAPH_JSON

    def _chat_message(self, ctx, chat, msg_id):
        with self._lock:
            msg = self._tenant_data(ctx.tenant)["chats"].get((chat, msg_id))
        if msg is None:
            return self._gerr(ctx, 404, "NotFound", "Resource not found.")
        context = "%s/$metadata#chats('%s')/messages/$entity" % (self.base_url, _quote(chat))
        return 200, ctx.ids(), self._with({"@odata.context": context}, msg), GRAPH_JSON

    def _channel_message(self, ctx, team, channel, msg_id, reply_id=None):
        parent, key = (None, msg_id) if reply_id is None else (msg_id, reply_id)
        with self._lock:
            msg = self._tenant_data(ctx.tenant)["channels"].get((team.lower(), channel, parent, key))
        if msg is None:
            return self._gerr(ctx, 404, "NotFound", "Resource not found.")
        context = "%s/$metadata#teams('%s')/channels('%s')/messages%s/$entity" % (
            self.base_url, _quote(team), _quote(channel),
            "" if parent is None else "('%s')/replies" % _quote(parent))
        return 200, ctx.ids(), self._with({"@odata.context": context}, msg), GRAPH_JSON

    def _presence(self, ctx, user, context=None):
        with self._lock:
            p = self._tenant_data(ctx.tenant)["presence"].get(user.lower())
        if p is None:
            return self._gerr(ctx, 404, "NotFound", "The requested user '%s' was not found." % user)
        context = context or self.base_url + "/$metadata#communications/presences/$entity"
        return 200, ctx.ids(), dict({"@odata.context": context}, **p), GRAPH_JSON

    def _user_presence(self, ctx, user):
        context = "%s/$metadata#users('%s')/presence/$entity" % (self.base_url, _quote(user))
        return self._presence(ctx, user, context)

    def _drive_delta(self, ctx, token, drive_id):
        with self._lock:
            coll = self._tenant_data(ctx.tenant)["drives"].get(drive_id)
        return self._delta(ctx, coll, token)

    def _owner_delta(self, ctx, token, user):
        with self._lock:
            d = self._tenant_data(ctx.tenant)
            coll = d["drives"].get(d["owners"].get(user.lower()))
        return self._delta(ctx, coll, token)

    def _list_delta(self, ctx, token, site, list_id):
        with self._lock:
            coll = self._tenant_data(ctx.tenant)["lists"].get((site.lower(), list_id.lower()))
        return self._delta(ctx, coll, token)

    def _delta(self, ctx, coll, fn_token):
        """A page of a delta run. A token's state: the run's changes are log[from:start] (from None:
        a full enumeration), this page starts at offset; a deltaLink's start is None: "when used"."""
        if coll is None:
            return self._gerr(ctx, 404, "itemNotFound", "The resource could not be found.")
        q = ctx.rec.query
        token = q.get("token") if fn_token is None else fn_token
        segs = ctx.rec.path.rstrip("/").split("/")
        link = self.url + "/".join(segs[:-1] + ["delta"])   # delta(token='...') -> delta
        if q.get("$top") is not None and not re.fullmatch(r"[1-9][0-9]{0,8}", q["$top"]):
            return self._bad(ctx, "Invalid value '%s' for the query option $top." % q["$top"], "invalidRequest")
        context = "%s/$metadata#Collection(%s)" % (self.base_url,
                                                   "driveItem" if coll["kind"] == "drive" else "listItem")
        with self._lock:
            now, asked = len(coll["log"]), {"select": q.get("$select"), "top": q.get("$top")}
            if token is None:
                run = dict(asked, **{"from": None, "start": now, "offset": 0})
            elif token == "latest":
                token = self._issue(ctx.tenant, coll, dict(asked, **{"from": now, "start": None, "offset": 0}))
                return 200, ctx.ids(), {"@odata.context": context, "value": [],
                                        "@odata.deltaLink": link + "?token=" + token}, GRAPH_JSON
            elif _parse(token) is not None:   # a time (OneDrive for Business and SharePoint)
                t = _parse(token)
                since = next((i for i, v in enumerate(coll["log"]) if v["time"] > t), now)
                run = dict(asked, **{"from": since, "start": now, "offset": 0})
            else:
                st = self._delta_tokens.get(token)
                if st is None or st["tenant"] != ctx.tenant or st["coll"] is not coll:
                    return self._bad(ctx, "Invalid token.", "invalidRequest")
                if st["expired"]:
                    return self._gerr(ctx, 410, "resyncRequired", RESYNC_MESSAGE,
                                      {"Location": link} if st["expired"]["location"] else {})
                run = {k: st[k] for k in ("from", "start", "offset", "select", "top")}
                run["start"] = now if run["start"] is None else run["start"]
                run.update((k, v) for k, v in asked.items() if v is not None)   # asked again: asked anew
            n = max(1, int(run["top"] or self.page_size))
            changes = self._changes(coll, run["from"], run["start"])
            out = {"@odata.context": context, "value": [self._delta_item(coll, v, run["select"])
                                                        for v in changes[run["offset"]:run["offset"] + n]]}
            if len(changes) > run["offset"] + n:   # tokens stay valid: a page can be asked again
                out["@odata.nextLink"] = link + "?token=" + self._issue(ctx.tenant, coll,
                                                                        dict(run, offset=run["offset"] + n))
            else:   # the next run starts where this one started: what changed meanwhile is in it
                out["@odata.deltaLink"] = link + "?token=" + self._issue(
                    ctx.tenant, coll, dict(run, **{"from": run["start"], "start": None, "offset": 0}))
        return 200, ctx.ids(), out, GRAPH_JSON

    def _delta_item(self, coll, version, select):
        item = version["item"]
        if version["deleted"]:
            item = dict(item, deleted={"state": "deleted"})
        if coll["kind"] == "drive" and "path" in item.get("parentReference", {}):   # delta gives no path
            item = dict(item, parentReference={k: v for k, v in item["parentReference"].items() if k != "path"})
        if select:
            head = {"id": item["id"], "deleted": item["deleted"]} if version["deleted"] else {"id": item["id"]}
            item = self._with(head, self._select(select, item)[0])
        return item

class _Ctx:
    """The request being answered, and the tenant and app of its token."""

    def __init__(self, rec):
        self.rec, self.tenant, self.app = rec, None, None
        self.request_id = str(uuid.uuid4())
        self.client_request_id = rec.headers.get("client-request-id") or str(uuid.uuid4())

    def ids(self):
        return {"request-id": self.request_id, "client-request-id": self.client_request_id}
