#!/usr/bin/env python3
"""A person at a browser, for the OAuth2 tests: signs in at the test provider and consents.

    oidc_user.py CA_FILE LOGIN code URL        follow an authorization URL to its redirect
    oidc_user.py CA_FILE LOGIN device URL CODE enter a device flow's user code at URL
    oidc_user.py CA_FILE LOGIN token ISSUER [RESOURCE]
                                               a whole device flow for the test's client:
                                               prints the token response (JSON)
    oidc_user.py CA_FILE - revoke ISSUER TOKEN revoke a token (RFC 7009)

Fills in each form the provider shows (user code, device confirmation, sign-in, consent) and
follows redirects. A redirect away from the provider (the client's loopback redirect) is
requested as a browser would, and what it answers is printed. `deny` as LOGIN aborts instead.
"""
import html.parser
import http.cookiejar
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request


class Forms(html.parser.HTMLParser):
    """The forms of a page: action, method and their inputs' names and values."""

    def __init__(self):
        super().__init__()
        self.forms = []
        self.links = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get"), "id": a.get("id"), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value") or ""


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


def post(opener, url, form):
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with opener.open(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}")


def sign_in(opener, url, login, user_code=None):
    """Walk the provider's pages from URL as LOGIN; returns the last page (or what the client's
    redirect URI answered)."""
    provider = urllib.parse.urlsplit(url).netloc
    method, body = "GET", None
    for _ in range(30):
        req = urllib.request.Request(url, data=body, method=method)
        try:
            resp = opener.open(req, timeout=30)
            status, headers, page = resp.status, resp.headers, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            status, headers, page = e.code, e.headers, e.read().decode("utf-8", "replace")
        if status in (301, 302, 303, 307, 308):
            url = urllib.parse.urljoin(url, headers["Location"])
            method, body = "GET", None
            if urllib.parse.urlsplit(url).netloc != provider:
                # The client's own redirect URI: deliver it, as the browser would.
                with urllib.request.urlopen(url, timeout=30) as r:
                    return r.read().decode("utf-8", "replace")
            continue
        if status != 200:
            sys.exit(f"HTTP {status} at {url}:\n{page}")
        parser = Forms()
        parser.feed(page)
        forms = [f for f in parser.forms if "abort" not in f["action"]]
        if not forms:
            return page
        form = forms[0]
        fields = form["fields"]
        if login == "deny" and fields.get("prompt") in ("login", "consent"):
            # The page's cancel link.
            url = urllib.parse.urljoin(url, next(link for link in parser.links if "abort" in link))
            method, body = "GET", None
            continue
        if "user_code" in fields and not fields["user_code"]:
            fields["user_code"] = user_code
        if "login" in fields:
            fields["login"] = login
            fields["password"] = "anything"
        url = urllib.parse.urljoin(url, form["action"] or url)
        method, body = form["method"].upper(), urllib.parse.urlencode(fields).encode()
    sys.exit("too many steps")


def main():
    ca, login, mode, url = sys.argv[1:5]
    ctx = ssl.create_default_context(cafile=ca)
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ctx),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        NoRedirect(),
    )
    if mode == "code":
        print(sign_in(opener, url, login))
    elif mode == "device":
        print(sign_in(opener, url, login, sys.argv[5]))
    elif mode == "token":
        form = {"client_id": "pillarbox-cli", "scope": "openid offline_access pop"}
        if len(sys.argv) > 5:
            form["resource"] = sys.argv[5]
        auth = post(opener, url + "/device/auth", form)
        sign_in(opener, auth["verification_uri"], login, auth["user_code"])
        grant = {"client_id": "pillarbox-cli", "device_code": auth["device_code"],
                 "grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
        print(json.dumps(post(opener, url + "/token", grant)))
    elif mode == "revoke":
        print(json.dumps(post(opener, url + "/token/revocation", {"client_id": "pillarbox-cli", "token": sys.argv[5]})))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
