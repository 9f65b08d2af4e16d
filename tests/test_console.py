"""The operator console, started as `workerhost console -c FILE --listen 127.0.0.1:PORT`
against a running stack: over plain HTTP, and in a real browser (Debian's chromium, headless,
through selenium) that logs in, reads the queues and replays dead letters."""

from __future__ import annotations

import copy
import http.cookiejar
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, host_config, host_env, scalar, wait_until
from conftest import submit_json as submit

from workerhost.sandbox.processes import free_port
from workerhost.sandbox.stack import Sandbox

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DOCS = ROOT / "docs"
USERS = {"ada": {"password": "ada-admin-pw", "role": "admin"},
         "vic": {"password": "vic-viewer-pw", "role": "viewer"}}
PAGES = ["/", "/live", "/dead-letters", "/dead-letters/1", "/ledger", "/ledger?state=due",
         "/ledger?function=flaky&q=order", "/schedules", "/schedules/live", "/handlers",
         "/workers", "/dead-letters/retry", "/csrf-token"]


@dataclass
class Console:
    """`workerhost console` as a subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_console(config_path: Path, env: dict[str, str], log_path: Path,
                  listen: str) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "workerhost.cli", "console", "-c", str(config_path),
             "--listen", listen], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)  # fmt: skip


@pytest.fixture
def console_factory(sandbox: Sandbox, tmp_path: Path) -> Iterator[Callable[..., Console]]:
    """Start `workerhost console` on a free loopback port; each is stopped at teardown."""
    started: list[Console] = []

    def start(config: dict[str, Any], port: int | None = None) -> Console:
        path = tmp_path / f"console-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        port = port or free_port()
        log_path = tmp_path / f"console-{len(started)}.log"
        process = start_console(path, host_env(sandbox), log_path, f"127.0.0.1:{port}")
        console = Console(process, port, log_path)
        started.append(console)
        wait_until(lambda: "console on http://" in console.log() or process.poll() is not None,
                   what="the console to listen")
        assert process.poll() is None, console.log()
        return console

    yield start
    for console in started:
        if console.process.poll() is None:
            console.process.terminate()
            try:
                console.process.wait(10)
            except subprocess.TimeoutExpired:
                console.process.kill()
                console.process.wait()


# -- HTTP ----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Any
    body: str


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def request(url: str, *, user: str | None = None, data: dict[str, str] | None = None,
            headers: dict[str, str] | None = None, jar: http.cookiejar.CookieJar | None = None,
            method: str | None = None) -> Answer:  # fmt: skip
    """One request, redirects not followed; HTTP errors are answers too."""
    sent = dict(headers or {})
    if user is not None:
        secret = b64encode(f"{user}:{USERS[user]['password']}".encode()).decode()
        sent["Authorization"] = f"Basic {secret}"
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    opener = urllib.request.build_opener(NoRedirect(),
                                         urllib.request.HTTPCookieProcessor(jar))
    try:
        with opener.open(urllib.request.Request(url, body, sent, method=method),
                         timeout=30) as answer:
            return Answer(answer.status, answer.headers, answer.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers, error.read().decode())


def token(console: Console, user: str, jar: http.cookiejar.CookieJar) -> str:
    answer = request(f"{console.url}/csrf-token", user=user, jar=jar)
    assert answer.status == 200, answer.body
    value: str = json.loads(answer.body)["csrf_token"]
    return value


# -- the stack -----------------------------------------------------------------------------


def waiting(db: Any) -> str:
    """A function no worker serves, of this test alone (gearmand lives for the session)."""
    return f"waiting_{db.database}"


@pytest.fixture
def stack(sandbox: Sandbox, db: Any, host_factory: Any) -> dict[str, Any]:
    """A host whose `flaky` jobs fail while the flag says so (one attempt each, so they are
    dead letters at once), whose `doomed` jobs always fail, and jobs of `waiting`, a
    function no worker serves, queued in gearmand. Returns the console's config."""
    cursor = db.cursor()
    cursor.execute("CREATE TABLE results (id BIGINT PRIMARY KEY, attempt INT, "
                   "unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1)")
    cursor.execute("CREATE TABLE flags (name VARCHAR(32) PRIMARY KEY, broken BOOL)")
    cursor.execute("INSERT INTO flags VALUES ('handler', TRUE)")
    config = host_config(sandbox, db.database, {
        "flaky": {"python": "sample_handlers:fails_until_flag", "retries": {"attempts": 1}},
        "doomed": {"python": "sample_handlers:always_fails", "retries": {"attempts": 1}},
    })
    host_factory(config)
    submit(sandbox.gearman_server, "flaky", [{"id": i, "note": f"order {i}"} for i in range(1, 6)])
    submit(sandbox.gearman_server, "doomed", [{"id": 100}])
    submit(sandbox.gearman_server, waiting(db), [{"id": i} for i in range(3)])
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM workerhost_dead_letters") == 6,
               what="6 dead letters")
    config["host"] = {**config["host"], "console": {"users": USERS}}
    return config


def letters(db: Any, function: str) -> list[int]:
    cursor = db.cursor()
    cursor.execute("SELECT id FROM workerhost_dead_letters WHERE `function` = %s ORDER BY id",
                   (function,))
    return [int(row[0]) for row in cursor.fetchall()]


def test_without_a_login_every_page_is_refused(stack: dict[str, Any],
                                               console_factory: Any) -> None:
    from limits import parse

    from workerhost.console.throttle import FAILED_PER_CLIENT

    console = console_factory(stack)
    for n, page in enumerate(PAGES):
        script = request(console.url + page)
        assert script.status == 401, page
        assert script.headers["WWW-Authenticate"].startswith("Basic realm="), page
        wrong = request(console.url + page, headers=basic("ada", "guess"))
        # Each wrong password counts: past the limit of failed logins, 429.
        assert wrong.status == (401 if n < parse(FAILED_PER_CLIENT).amount else 429), page
        browser = request(console.url + page, headers={"Accept": "text/html"})
        assert browser.status == 302, page
        assert urllib.parse.urlparse(browser.headers["Location"]).path == "/login", page
    assert request(console.url + "/login").status == 200  # the one page open to all


def test_admin_sees_every_function_with_its_queue_and_no_secret(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    console = console_factory(stack)

    def queued(body: str, function: str) -> tuple[int, int, int]:
        row = re.search(rf'<tr data-function="{function}"[^>]*>.*?class="n queued">([\d,]+)'
                        r'.*?class="n running">([\d,]+).*?class="n workers">([\d,]+)', body,
                        re.DOTALL)
        assert row, f"no queue row for {function}"
        queued_, running, workers = (int(g.replace(",", "")) for g in row.groups())
        return queued_, running, workers

    overview = request(console.url + "/", user="ada")
    assert overview.status == 200
    assert f"<h3>{sandbox.gearman_server}</h3>" in overview.body
    assert queued(overview.body, waiting(db)) == (3, 0, 0)
    assert queued(overview.body, "flaky")[2] == 1  # the host's one worker process
    assert queued(overview.body, "doomed")[2] == 1
    live = request(console.url + "/live", user="ada").body
    assert re.search(r'data-function="flaky">\s*<td>flaky</td>\s*<td class="n dead"><a [^>]+>5<',
                     live), live
    assert "the host serves no metrics" in live  # no host.metrics: rates left out, with a note

    secrets = [sandbox.password, *(user["password"] for user in USERS.values())]
    for page in [*PAGES[:-2], f"/dead-letters/{letters(db, 'flaky')[0]}"]:
        answer = request(console.url + page, user="ada")
        assert answer.status in (200, 404), page
        assert not [s for s in secrets if s in answer.body], page
    handlers = request(console.url + "/handlers", user="ada").body
    assert len(re.findall(r"password: (?:&#39;|')\*\*\*", handlers)) == 1 + len(USERS)


def test_an_action_needs_its_csrf_token_and_an_admin(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    console = console_factory(stack)
    doomed = letters(db, "doomed")[0]
    url = f"{console.url}/dead-letters/{doomed}/purge"

    jar = http.cookiejar.CookieJar()
    missing = request(url, user="ada", data={}, jar=jar)
    assert missing.status == 400 and "CSRF token is missing" in missing.body
    forged = request(url, user="ada", data={"csrf_token": "forged"}, jar=jar)
    assert forged.status == 400
    assert letters(db, "doomed") == [doomed]

    viewer = http.cookiejar.CookieJar()
    refused = request(url, user="vic", data={"csrf_token": token(console, "vic", viewer)},
                      jar=viewer)
    assert refused.status == 403 and "only an admin" in refused.body
    assert request(url, user="vic").status == 403  # the confirmation page, too
    assert letters(db, "doomed") == [doomed]

    done = request(url, user="ada", data={"csrf_token": token(console, "ada", jar)}, jar=jar)
    assert done.status == 302
    assert letters(db, "doomed") == []
    assert re.search(r"ada \(basic\) purged dead letter \d+: 1 deleted", console.log())


def test_no_request_but_a_post_with_its_csrf_token_changes_anything(
        db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    """HEAD once reached the actions (Flask answers it with a route's GET-or-POST view, and
    CSRF protection checked POST, PUT, PATCH and DELETE only): a page of another site
    purged a letter with one fetch(..., {method: "HEAD", credentials: "include"})."""
    console = console_factory(stack)
    doomed = letters(db, "doomed")[0]
    before = {function: letters(db, function) for function in ("flaky", "doomed")}
    upto = str(max(before["flaky"] + before["doomed"]))
    basic_jar = http.cookiejar.CookieJar()
    basic_token = token(console, "ada", basic_jar)
    session = http.cookiejar.CookieJar()
    assert form_login(console, "ada", str(USERS["ada"]["password"]), session).status == 302
    page = request(console.url + "/dead-letters", jar=session, headers={"Accept": "text/html"})
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.body)
    assert found, page.body
    session_token = found.group(1)
    actions = [f"/dead-letters/{doomed}/retry", f"/dead-letters/{doomed}/purge",
               "/dead-letters/retry", "/dead-letters/purge"]

    def unchanged() -> None:
        assert {function: letters(db, function) for function in before} == before

    for path in actions:
        form = {"upto": upto, "function": "", "q": ""}
        for method in ("HEAD", "PUT", "PATCH", "DELETE", "PURGE", "TRACE", "OPTIONS"):
            # With a good token too: only a POST acts, whatever else the request carries.
            for jar, sent, who in ((basic_jar, basic_token, "ada"), (session, session_token,
                                                                     None)):
                answer = request(console.url + path, user=who, jar=jar, method=method,
                                 data={**form, "csrf_token": sent},
                                 headers={"X-CSRFToken": sent})
                if method in ("HEAD", "OPTIONS"):
                    assert answer.status == 200, (method, path)
                else:
                    assert answer.status == 405, (method, path, answer.status)
                unchanged()
        # A POST without its token, or with another session's, or a forged one.
        for data, jar, who in (({}, session, None), ({}, basic_jar, "ada"),
                               ({"csrf_token": basic_token}, session, None),
                               ({"csrf_token": "forged"}, basic_jar, "ada")):
            answer = request(console.url + path, user=who, jar=jar, data={**form, **data})
            assert answer.status == 400 and "CSRF" in answer.body, (path, data)
            unchanged()
    # Logging out is a POST with its token too.
    assert request(console.url + "/logout", jar=session, method="HEAD").status == 405
    assert request(console.url + "/logout", jar=session, data={}).status == 400
    assert request(console.url + "/", jar=session).status == 200
    # The same session, and its token, in a POST: it acts (the checks above could fail).
    done = request(f"{console.url}/dead-letters/{doomed}/purge", jar=session,
                   data={"csrf_token": session_token})
    assert done.status == 302 and letters(db, "doomed") == []


def test_no_search_finds_what_a_page_masks(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    """A search once matched the raw text while pages showed ***: one character at a time, a
    viewer recovered the database password from a dead letter that quoted it."""
    console = console_factory(stack)
    password = sandbox.password
    assert not set(password) & set("ZQ:{}\"k"), "the text around it must not match"
    cursor = db.cursor()
    quoted = f"ZZZ:{password}:ZZZ"
    cursor.execute("INSERT INTO workerhost_dead_letters (`function`, payload, attempts, error) "
                   "VALUES ('vault', %s, 1, %s)", (f'{{"k":"{password}"}}', quoted))
    vault = int(cursor.lastrowid)
    # A secret across the end of a list's preview (160 characters) is masked whole too.
    cursor.execute("INSERT INTO workerhost_dead_letters (`function`, payload, attempts, error) "
                   "VALUES ('vault', 'Q', 1, %s)", ("Q" * 150 + password,))
    cursor.execute("INSERT INTO workerhost_outbox (`function`, payload, not_before) VALUES "
                   "('vault', %s, NOW(6) + INTERVAL 1 DAY)", (f'{{"k":"{password}"}}',))

    def found(search: str) -> list[str]:
        """Where `search` finds the letter or the ledger row quoting the password."""
        where = []
        q = urllib.parse.quote(search)
        page = request(f"{console.url}/dead-letters?q={q}", user="vic")
        assert page.status == 200, page.body
        if f'/dead-letters/{vault}"' in page.body:
            where.append("dead letters")
        ledger = request(f"{console.url}/ledger?function=vault&q={q}", user="vic")
        assert ledger.status == 200, ledger.body
        if "data-id=" in ledger.body:
            where.append("ledger")
        for verb in ("retry", "purge"):
            confirm = request(f"{console.url}/dead-letters/{verb}?function=vault&q={q}",
                              user="ada")
            count = re.search(r'id="matching">(?:At least )?([\d,]+) dead letter', confirm.body)
            assert count, confirm.body
            if count.group(1) != "0":
                where.append(verb)
        return where

    # What the pages show can be found: the searches work.
    assert found("ZZZ:***:ZZZ") == ["dead letters", "retry", "purge"]
    assert found('"k":"***"') == ["dead letters", "ledger", "retry", "purge"]
    for page in (f"/dead-letters/{vault}", "/dead-letters", "/ledger?function=vault"):
        assert password[:10] not in request(console.url + page, user="vic").body, page
    # No part of the password finds anything, alone or with what stands beside it.
    parts = {password[i:j] for i in range(len(password)) for j in range(i + 1, len(password) + 1)}
    for part in sorted(parts, key=len):
        assert found(part) == [], part
    for n in range(1, len(password) + 1):
        assert found(":" + password[:n]) == [], password[:n]
        assert found('"k":"' + password[:n]) == [], password[:n]
        assert found(password[-n:] + ":ZZZ") == [], password[-n:]
    # Nor does an action on a search: it takes what the confirmation counted, here none.
    jar = http.cookiejar.CookieJar()
    for verb in ("retry", "purge"):
        done = request(f"{console.url}/dead-letters/{verb}", user="ada", jar=jar,
                       data={"csrf_token": token(console, "ada", jar), "function": "vault",
                             "q": password[:4], "upto": str(vault + 1)})
        assert done.status == 302
    assert letters(db, "vault") == [vault, vault + 1]


def test_an_admin_retries_every_dead_letter_of_every_function_at_once(
        db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    console = console_factory(stack)
    db.cursor().execute("UPDATE flags SET broken = FALSE")  # flaky's cause fixed; doomed's not
    jar = http.cookiejar.CookieJar()
    confirm = request(console.url + "/dead-letters/retry", user="ada", jar=jar)
    assert re.search(r"6 dead letters\s*\(all of them\), up to id (\d+)\.", confirm.body)
    upto = re.search(r'name="upto" value="(\d+)"', confirm.body)
    assert upto
    done = request(console.url + "/dead-letters/retry", user="ada", jar=jar,
                   data={"csrf_token": token(console, "ada", jar), "function": "", "q": "",
                         "upto": upto.group(1)})
    assert done.status == 302
    assert f"ada (basic) retried dead letters up to id {upto.group(1)}: 6 queued again" in (
        console.log())
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM results") == 5, timeout=30,
               what="flaky's 5 jobs to complete")
    wait_until(lambda: letters(db, "doomed") and letters(db, "doomed")[0] > int(upto.group(1)),
               timeout=30, what="doomed's job to fail again, a new dead letter")
    assert letters(db, "flaky") == []


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def form_login(console: Console, user: str, password: str,
               jar: http.cookiejar.CookieJar) -> Answer:  # fmt: skip
    """The login page's form, sent as a browser sends it (with its CSRF token)."""
    page = request(console.url + "/login", jar=jar)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.body)
    assert found, page.body
    return request(console.url + "/login", data={"user": user, "password": password,
                                                 "csrf_token": found.group(1)}, jar=jar)


def test_failed_logins_past_the_limit_are_refused_with_429_form_and_basic(
        stack: dict[str, Any], console_factory: Any) -> None:
    from limits import parse

    from workerhost.console.throttle import FAILED_PER_CLIENT

    console = console_factory(stack)
    allowed = parse(FAILED_PER_CLIENT).amount
    for _ in range(allowed):
        assert request(console.url + "/", headers=basic("ada", "guess")).status == 401
    # The limit reached: refused before the password is looked at, the right one too.
    refused = request(console.url + "/", user="ada")
    assert refused.status == 429
    assert "Too many failed logins from 127.0.0.1: try again in" in refused.body
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # The login form counts the same failures, whatever the name.
    jar = http.cookiejar.CookieJar()
    page = form_login(console, "vic", str(USERS["vic"]["password"]), jar)
    assert page.status == 429 and "Too many failed logins" in page.body
    assert request(console.url + "/", jar=jar).status == 401  # no session was made
    assert "console: a login from 127.0.0.1 refused: Too many failed logins" in console.log()


def test_the_login_throttle_counts_per_client_and_per_user_and_locks_nobody_out() -> None:
    """30 wrong passwords from anywhere once locked a user out, the right password too."""
    from werkzeug.exceptions import TooManyRequests

    from workerhost.console.throttle import LoginThrottle

    throttle = LoginThrottle(per_client="3 per minute", per_user="4 per minute")
    for client in ("10.0.0.1", "10.0.0.2"):
        for _ in range(2):
            throttle.check(client, "ada")
            throttle.failed(client, "ada")
    # Four failures as ada, from two addresses: those are refused as ada ...
    for client in ("10.0.0.1", "10.0.0.2"):
        with pytest.raises(TooManyRequests) as info:
            throttle.check(client, "ada")
        assert info.value.description.startswith("Too many failed logins as 'ada': try again in")
        assert info.value.retry_after is not None
    # ... but ada, from an address without failures, may still log in, and a guesser's new
    # address gets one guess before it is refused too.
    throttle.check("10.0.0.3", "ada")
    throttle.failed("10.0.0.3", "ada")
    with pytest.raises(TooManyRequests, match="as 'ada'"):
        throttle.check("10.0.0.3", "ada")
    throttle.check("10.0.0.4", "ada")
    throttle.check("10.0.0.1", "vic")  # another name: not refused from there
    throttle.failed("10.0.0.1", "vic")
    with pytest.raises(TooManyRequests, match=re.escape("from 10.0.0.1:")):  # its third failure
        throttle.check("10.0.0.1", "vic")


class Stall:
    """A TCP proxy to the database that passes nothing on while `flowing` is clear: a server
    that accepts connections and then never answers."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()  # held, as a hung server holds it
                sink.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()


def test_with_the_database_hung_every_page_answers_within_seconds_and_recovers(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    stall = Stall(sandbox.mysql_port)
    console = console_factory({**stack, "database": {**stack["database"], "port": stall.port}})

    def dead(body: str) -> str | None:
        cell = re.search(r'data-function="flaky">\s*<td>flaky</td>\s*<td class="n dead">'
                         r'(?:<a [^>]+>)?(?:<span [^>]+>)?([^<]+)<', body)
        return cell.group(1) if cell else None

    assert dead(request(console.url + "/live", user="vic").body) == "5"
    # Every server thread with a connection open, as after a while in use.
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: request(console.url + "/dead-letters", user="vic").status,
                            range(16))) == {200}
    stall.flowing.clear()
    pages = ["/", "/live", "/dead-letters", "/dead-letters?q=order", "/ledger",
             f"/dead-letters/{letters(db, 'flaky')[0]}", "/dead-letters/retry", "/schedules"]

    def timed(page: str) -> tuple[float, Answer]:
        started = time.monotonic()
        answer = request(console.url + page, user="ada")
        return time.monotonic() - started, answer

    # More pages at once than the console has threads, and the login page behind them.
    with ThreadPoolExecutor(len(pages) + 1) as pool:
        stuck = [pool.submit(timed, page) for page in pages]
        login = pool.submit(timed, "/login")
        answers = dict(zip(pages, (future.result() for future in stuck), strict=True))
        login_took, login_page = login.result()
    for page, (took, answer) in answers.items():
        assert took < 10, (page, took)  # two rounds of 4 threads, 3 s each
        assert answer.status in (200, 503), (page, answer.status)
    assert login_page.status == 200 and login_took < 10
    assert answers["/dead-letters"][1].status == 503
    assert "the database did not answer" in answers["/dead-letters"][1].body
    # The overview answers, and says what it could not read: unknown, not 0.
    assert answers["/live"][1].status == 200
    assert dead(answers["/live"][1].body) == "unknown"

    stall.flowing.set()
    wait_until(lambda: request(console.url + "/dead-letters", user="vic").status == 200,
               timeout=20, what="the console to read the database again")
    assert dead(request(console.url + "/live", user="vic").body) == "5"


def test_a_login_outlives_a_restart_of_the_console_that_keeps_its_secret_key(
        db: Any, stack: dict[str, Any], console_factory: Any, tmp_path: Path) -> None:
    key = secrets.token_hex(32)
    (tmp_path / "console.key").write_text(key + "\n")
    console = {**stack["host"]["console"], "secret_key_file": str(tmp_path / "console.key")}
    config = {**stack, "host": {**stack["host"], "console": console}}
    browser = {"Accept": "text/html"}
    first = console_factory(config)
    assert "logins kept across restarts" in first.log()
    jar = http.cookiejar.CookieJar()
    assert form_login(first, "ada", str(USERS["ada"]["password"]), jar).status == 302
    page = request(first.url + "/dead-letters", jar=jar, headers=browser)
    assert page.status == 200 and '<span id="visitor">ada</span>' in page.body
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.body)
    assert csrf
    first.process.terminate()
    assert first.process.wait(10) == 0

    # Another process (a restart, or the next one behind a balancer): the same session, and
    # the CSRF token the first one gave is good for an action.
    second = console_factory(config, first.port)
    page = request(second.url + "/", jar=jar, headers=browser)
    assert page.status == 200 and '<span id="visitor">ada</span>' in page.body
    doomed = letters(db, "doomed")[0]
    done = request(f"{second.url}/dead-letters/{doomed}/purge", jar=jar,
                   data={"csrf_token": csrf.group(1)})
    assert done.status == 302 and letters(db, "doomed") == []
    handlers = request(second.url + "/handlers", jar=jar).body
    assert key not in handlers and re.search(r"secret_key: (?:&#39;|')\*\*\*", handlers)

    # The cookie is good only with the key: a console without it sends ada to log in, and so
    # does one where ada's password has changed.
    for other in (stack, {**config, "host": {**config["host"], "console": {
            **console, "users": {**USERS, "ada": {"password": "new-pw", "role": "admin"}}}}}):
        second.process.terminate()
        assert second.process.wait(10) == 0
        second = console_factory(other, first.port)
        refused = request(second.url + "/", jar=jar, headers=browser)
        assert refused.status == 302, refused.body
        assert urllib.parse.urlparse(refused.headers["Location"]).path == "/login"


def test_a_logout_ends_the_session_everywhere_and_each_console_has_its_own_cookie(
        stack: dict[str, Any], console_factory: Any) -> None:
    browser = {"Accept": "text/html"}
    first, second = console_factory(stack), console_factory(stack)
    jar = http.cookiejar.CookieJar()
    for console in (first, second):  # one browser, two consoles on one host
        assert form_login(console, "ada", str(USERS["ada"]["password"]), jar).status == 302
    assert {cookie.name for cookie in jar} == {f"workerhost_console_{first.port}",
                                               f"workerhost_console_{second.port}"}
    for console in (first, second):
        assert request(console.url + "/", jar=jar, headers=browser).status == 200
    copied = http.cookiejar.CookieJar()
    for cookie in jar:
        copied.set_cookie(cookie)
    page = request(first.url + "/", jar=jar, headers=browser)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.body)
    assert found
    assert request(first.url + "/logout", jar=jar, data={"csrf_token": found.group(1)}
                   ).status == 302
    # The copy of the cookie, taken before the logout, is refused too.
    refused = request(first.url + "/dead-letters", jar=copied, headers=browser)
    assert refused.status == 302
    assert urllib.parse.urlparse(refused.headers["Location"]).path == "/login"
    assert request(second.url + "/", jar=copied, headers=browser).status == 200  # the other
    # A form sent after the session ended leads to the login page, not to a CSRF error.
    sent = request(first.url + "/dead-letters/retry", jar=copied, headers=browser,
                   data={"csrf_token": found.group(1), "upto": "1"})
    assert sent.status == 303 and urllib.parse.urlparse(sent.headers["Location"]).path == (
        "/login")


def test_a_logout_outlives_a_restart_of_the_console_that_keeps_its_secret_key(
        db: Any, stack: dict[str, Any], console_factory: Any, tmp_path: Path) -> None:
    """With a kept key, a restart makes every old cookie good again: a logged-out one must
    stay refused (the console keeps its logouts in the database)."""
    (tmp_path / "console.key").write_text(secrets.token_hex(32) + "\n")
    config = {**stack, "host": {**stack["host"], "console": {
        **stack["host"]["console"], "secret_key_file": str(tmp_path / "console.key")}}}
    browser = {"Accept": "text/html"}
    first = console_factory(config)
    ada, vic = http.cookiejar.CookieJar(), http.cookiejar.CookieJar()
    assert form_login(first, "ada", str(USERS["ada"]["password"]), ada).status == 302
    assert form_login(first, "vic", str(USERS["vic"]["password"]), vic).status == 302
    copied = http.cookiejar.CookieJar()
    for cookie in ada:
        copied.set_cookie(cookie)
    page = request(first.url + "/", jar=ada, headers=browser)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.body)
    assert found
    assert request(first.url + "/logout", jar=ada, data={"csrf_token": found.group(1)}
                   ).status == 302
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_logouts") == 1

    def landing(console: Console, jar: http.cookiejar.CookieJar) -> str:
        answer = request(console.url + "/dead-letters", jar=jar, headers=browser)
        return urllib.parse.urlparse(answer.headers.get("Location") or "").path or str(
            answer.status)

    assert landing(first, copied) == "/login"
    first.process.terminate()
    assert first.process.wait(10) == 0
    second = console_factory(config, first.port)
    # vic's session outlives the restart (the key is kept); ada's copied one does not.
    assert landing(second, vic) == "200"
    assert landing(second, copied) == "/login"


def test_a_logout_on_one_console_ends_the_session_on_another_behind_the_same_balancer(
        db: Any, stack: dict[str, Any], console_factory: Any, tmp_path: Path) -> None:
    """Two consoles with one database and one key take each other's cookies (as behind a
    balancer): a logout on one is refused by the other within seconds, with no restart, while
    a session that did not log out stays good on both."""
    (tmp_path / "console.key").write_text(secrets.token_hex(32) + "\n")
    config = {**stack, "host": {**stack["host"], "console": {
        **stack["host"]["console"], "secret_key_file": str(tmp_path / "console.key")}}}
    browser = {"Accept": "text/html"}
    one, other = console_factory(config), console_factory(config)
    ada, vic = http.cookiejar.CookieJar(), http.cookiejar.CookieJar()
    assert form_login(one, "ada", str(USERS["ada"]["password"]), ada).status == 302
    assert form_login(one, "vic", str(USERS["vic"]["password"]), vic).status == 302

    def on_other(jar: http.cookiejar.CookieJar) -> http.cookiejar.CookieJar:
        """The jar's session cookie as the balancer would hand it to the other console (the
        cookie is named after the console's port, and these two listen on two ports)."""
        copied = http.cookiejar.CookieJar()
        for cookie in jar:
            cookie = copy.copy(cookie)
            cookie.name = f"workerhost_console_{other.port}"
            copied.set_cookie(cookie)
        return copied

    def landing(console: Console, jar: http.cookiejar.CookieJar) -> str:
        answer = request(console.url + "/dead-letters", jar=jar, headers=browser)
        return urllib.parse.urlparse(answer.headers.get("Location") or "").path or str(
            answer.status)

    ada_there, vic_there = on_other(ada), on_other(vic)
    assert landing(other, ada_there) == "200"
    page = request(one.url + "/", jar=ada, headers=browser)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.body)
    assert found
    assert request(one.url + "/logout", jar=ada, data={"csrf_token": found.group(1)}
                   ).status == 302
    logged_out = time.monotonic()
    wait_until(lambda: landing(other, ada_there) == "/login", timeout=15,
               what="the other console to refuse the session logged out on the first")
    assert time.monotonic() - logged_out < 10
    assert landing(other, vic_there) == "200"
    assert landing(one, vic) == "200"
    assert other.process.poll() is None


def test_the_logout_follower_says_once_that_the_database_is_silent_and_reads_again_after(
        sandbox: Sandbox, stack: dict[str, Any], db: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from workerhost.config.load import parse_config
    from workerhost.console import auth, logouts
    from workerhost.store import logout_table

    for name, value in host_env(sandbox).items():
        monkeypatch.setenv(name, value)
    silent = {**stack, "database": {**stack["database"], "port": free_port()}}
    revoked = auth.Revoked()
    follower = logouts.LogoutFollower(parse_config(silent, file="silent.yaml"), revoked)
    try:
        with caplog.at_level("INFO", logger="workerhost.console"):
            assert not follower.restore()
            assert not follower.restore()
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "sessions logged out" in said[0], said
        assert sandbox.password not in said[0]
    finally:
        follower.close()
    logout_table.add_logout(db, "sid-from-another-console", time.time() + 60, time.time())
    follower = logouts.LogoutFollower(parse_config(stack, file="stack.yaml"), revoked)
    follower.failing = True  # as after the silent spell above
    try:
        caplog.clear()
        with caplog.at_level("INFO", logger="workerhost.console"):
            assert follower.restore()
        assert "sid-from-another-console" in revoked
        assert [r.getMessage() for r in caplog.records] == [
            "console: the sessions logged out are read again"]
    finally:
        follower.close()


def test_behind_a_trusted_tls_proxy_the_cookie_is_secure_and_hsts_is_sent(
        stack: dict[str, Any], console_factory: Any) -> None:
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    config = {**stack, "host": {**stack["host"], "console": {
        **stack["host"]["console"], "trusted_proxies": ["127.0.0.0/8"]}}}
    for settings, trusted in ((stack, False), (config, True)):
        console = console_factory(settings)
        jar = http.cookiejar.CookieJar()
        page = request(console.url + "/login", jar=jar, headers=proxied)
        cookie = page.headers["Set-Cookie"]
        assert cookie.startswith(f"workerhost_console_{console.port}=")
        assert ("; Secure" in cookie) is trusted, cookie
        assert ("Strict-Transport-Security" in page.headers) is trusted
    # The client a failed login counts against: the proxy's word for it, when trusted.
    for _ in range(10):
        request(console.url + "/", headers={**proxied, **basic("ada", "guess")})
    refused = request(console.url + "/", headers={**proxied, **basic("ada", "guess")})
    assert "Too many failed logins from 203.0.113.7" in refused.body
    # Another client of the same proxy is not refused for it.
    assert request(console.url + "/", user="vic", headers={
        **proxied, "X-Forwarded-For": "203.0.113.8"}).status == 200


def test_without_users_it_answers_to_its_own_host_names_only(
        stack: dict[str, Any], console_factory: Any) -> None:
    config = {**stack, "host": {**stack["host"], "console": {
        "allowed_hosts": ["console.example.test:8080"]}}}
    console = console_factory(config)
    for host in ("127.0.0.1", "localhost", "[::1]"):
        assert request(console.url + "/handlers",
                       headers={"Host": f"{host}:{console.port}"}).status == 200, host
    assert request(console.url + "/handlers",
                   headers={"Host": "console.example.test:8080"}).status == 200
    # A page of a rebinding DNS name: refused, and shown nothing.
    for host in ("rebind.example.test:" + str(console.port), "localhost:1", "localhost"):
        answer = request(console.url + "/handlers", headers={"Host": host})
        assert answer.status == 421 and "sample_handlers" not in answer.body, host


def test_next_goes_to_a_path_of_this_console_only(
        stack: dict[str, Any], console_factory: Any) -> None:
    console = console_factory(stack)
    for target, landing in (("/dead-letters?q=a", "/dead-letters?q=a"),
                            ("/\t/evil.example", "/"), ("//evil.example", "/"),
                            ("/\\evil.example", "/"), ("https://evil.example/", "/"),
                            ("/ledger\n/x", "/"), ("/%09/evil.example", "/%09/evil.example")):
        jar = http.cookiejar.CookieJar()
        page = request(console.url + "/login?" + urllib.parse.urlencode({"next": target}),
                       jar=jar)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.body)
        assert found
        answer = request(console.url + "/login?" + urllib.parse.urlencode({"next": target}),
                         jar=jar, data={"user": "vic", "password": str(USERS["vic"]["password"]),
                                        "csrf_token": found.group(1)})
        assert answer.status == 302, (target, answer.status)
        assert answer.headers["Location"] == landing, target


def test_a_newline_in_a_field_cannot_forge_a_log_line(
        db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    console = console_factory(stack)
    jar = http.cookiejar.CookieJar()
    forged = "console: ada (basic) purged dead letters up to id 1: 999 deleted"
    answer = request(console.url + "/dead-letters/purge", user="ada", jar=jar,
                     data={"csrf_token": token(console, "ada", jar), "upto": "1",
                           "function": f"nothing\n{forged}"})
    assert answer.status == 302
    assert "function nothing\\nconsole: ada" in console.log()
    assert not [line for line in console.log().splitlines() if line.startswith(forged)]
    request(console.url + "/x%0aconsole:%20forged", user="ada", data={})  # no CSRF token
    assert "a POST to /x\\nconsole: forged refused" in console.log()
    assert not [line for line in console.log().splitlines() if line.startswith("console: f")]


def test_an_unknown_user_costs_the_same_work_as_a_known_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from workerhost.config.settings import ConsoleUser
    from workerhost.console import auth

    users = {"ada": ConsoleUser(name="ada", password="pw", role="admin")}
    digested: list[str] = []
    real = auth._digest
    monkeypatch.setattr(auth, "_digest", lambda text: digested.append(text) or real(text))
    assert auth.check(users, "ada", "guess") is None
    known = len(digested)
    assert auth.check(users, "nobody", "guess") is None
    assert len(digested) == 2 * known and known == 2
    assert auth.check(users, "ada", "pw") == users["ada"]


def test_the_overview_shows_each_functions_jobs_per_minute_from_the_hosts_counters(
        sandbox: Sandbox, db: Any, host_factory: Any, console_factory: Any) -> None:
    db.cursor().execute("CREATE TABLE results (id BIGINT PRIMARY KEY, attempt INT, "
                        "unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1)")
    config = host_config(sandbox, db.database, {
        "record": {"python": "sample_handlers:record", "processes": 2},
        "mixed": {"python": "sample_handlers:record_unless_told_to_fail",
                  "retries": {"attempts": 1}},
    }, host={"metrics": f"127.0.0.1:{free_port()}", "console": {"users": USERS}})
    host_factory(config)
    console = console_factory(config)

    def live() -> str:
        answer = request(console.url + "/live", user="vic")
        assert answer.status == 200, answer.body
        return answer.body

    def cell(body: str, function: str, column: str) -> tuple[str, str] | None:
        """(the figure, its title) of a function's row in the Functions table."""
        found = re.search(rf'<tr data-function="{function}">.*?<td class="n {column}[^"]*"'
                          r'(?: title="([^"]*)")?>([^<]*)<', body, re.DOTALL)
        return None if found is None else (found.group(2), found.group(1) or "")

    # Rates need two readings of the host's counters: the jobs go between them.
    wait_until(lambda: "metrics so far; rates show after the next" in live(), timeout=30,
               what="the console's first reading of the host's metrics")
    assert cell(live(), "record", "completed") == ("\N{EN DASH}", "")
    submit(sandbox.gearman_server, "record", [{"id": i} for i in range(30)])
    submit(sandbox.gearman_server, "mixed", [{"id": 100 + i, "fail": i < 4} for i in range(10)])
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM results") == 36, what="36 rows")
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM workerhost_dead_letters") == 4,
               what="4 dead letters")

    def counted() -> str | None:
        body = live()
        found = cell(body, "record", "completed")
        return body if found is not None and found[1].startswith("30 jobs") else None

    body = wait_until(counted, timeout=30, what="the overview to count the 30 jobs of record")
    span = re.search(r"rates over the last (\d+) s of the host's metrics, read ([^;]+) ago", body)
    assert span, body
    seconds = int(span.group(1))
    assert span.group(2).endswith(" s"), "how old the rates are, in seconds while fresh"

    def per_minute(jobs: int) -> Any:  # the page shows the span in whole seconds
        return pytest.approx(jobs * 60 / seconds, rel=0.6 / seconds, abs=0.05)

    for function, column, jobs in (("record", "completed", 30), ("record", "failed", 0),
                                   ("mixed", "completed", 6), ("mixed", "failed", 4)):
        figure, title = cell(body, function, column) or ("", "")
        assert title == f"{jobs} jobs in {seconds} s", (function, column)
        assert float(figure) == per_minute(jobs), (function, column)


def test_without_users_it_listens_on_loopback_only_and_nobody_acts(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any,
        tmp_path: Path) -> None:
    config = {**stack, "host": {**stack["host"], "console": {}}}
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(config))
    exposed = subprocess.run(
        [sys.executable, "-m", "workerhost.cli", "console", "-c", str(path), "--listen",
         f"0.0.0.0:{free_port()}"], capture_output=True, text=True, env=host_env(sandbox),
        timeout=60, check=False)  # fmt: skip
    assert exposed.returncode == 1
    assert "reachable from other machines, and no users are configured" in exposed.stderr

    console = console_factory(config)
    assert request(console.url + "/").status == 200
    letter = letters(db, "doomed")[0]
    assert request(f"{console.url}/dead-letters/{letter}/retry").status == 403


def test_run_serves_the_console_as_a_supervised_child(
        sandbox: Sandbox, db: Any, host_factory: Any) -> None:
    port = free_port()
    config = host_config(sandbox, db.database, {"flaky": {"python": "sample_handlers:record"}},
                         host={"console": {"listen": f"127.0.0.1:{port}", "users": USERS}})
    host = host_factory(config)
    host.wait_for_log("console on http://")
    assert request(f"http://127.0.0.1:{port}/").status == 401
    answer = request(f"http://127.0.0.1:{port}/handlers", user="vic")
    assert answer.status == 200 and "sample_handlers:record" in answer.body


# -- in a browser --------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless chromium through Debian's chromedriver; quit (with its processes) at the end."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.exists():
            pytest.fail(f"{program} is missing: `make setup` installs chromium and "
                        "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1000",
                     f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    service = Service(executable_path=str(CHROMEDRIVER), port=free_port(),
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: Any, console: Console, user: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(console.url + "/")
    assert urllib.parse.urlparse(driver.current_url).path == "/login"
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(USERS[user]["password"])
    driver.find_element(By.ID, "login").click()
    assert driver.find_element(By.ID, "visitor").text == user


def text_of(driver: Any, css: str) -> str | None:
    """An element's text, read in one step: the overview swaps its figures every few seconds,
    and an element found before a swap is stale after it."""
    text: str | None = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.textContent.trim();", css)
    return text


def arrive(driver: Any, query: str) -> None:
    """Wait for the page a click asked for, whose URL holds `query`: until then the old page's
    elements are still there to be found."""
    wait_until(lambda: query in driver.current_url, timeout=10, what=f"a page with {query}")


def screenshot(driver: Any, name: str) -> None:
    """A picture for the README, written by every run (docs/console-*.png)."""
    DOCS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(max(int(height) + 40, 600), 1600))
    driver.save_screenshot(str(DOCS / f"console-{name}.png"))
    driver.set_window_size(1280, 1000)


def test_in_a_browser_dead_letters_are_found_and_replayed_and_a_viewer_cannot(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any,
        browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    console = console_factory(stack)
    log_in(browser, console, "ada")

    # The overview: each function's queue, and the figures refreshed without a reload.
    queue = f'table.queues tr[data-function="{waiting(db)}"]'
    assert text_of(browser, f"{queue} .queued") == "3"
    assert text_of(browser, f"{queue} .workers") == "0"
    assert text_of(browser, 'table.queues tr[data-function="flaky"] .workers') == "1"
    submit(sandbox.gearman_server, waiting(db), [{"id": 3}])
    wait_until(lambda: text_of(browser, f"{queue} .queued") == "4", timeout=15,
               what="the overview to show the new job without a reload")
    wait_until(lambda: text_of(browser, "#ledger-rows"), timeout=15, what="the ledger's figures")
    screenshot(browser, "overview")

    # Dead letters of one function; one opened.
    browser.find_element(By.LINK_TEXT, "Dead letters").click()
    Select(browser.find_element(By.ID, "function")).select_by_visible_text("flaky")
    browser.find_element(By.ID, "apply").click()
    arrive(browser, "function=flaky")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.letters tbody tr")
    assert len(rows) == 5
    screenshot(browser, "dead-letters")
    rows[-1].find_element(By.CSS_SELECTOR, "a").click()
    arrive(browser, f"/dead-letters/{letters(db, 'flaky')[0]}")
    assert browser.find_element(By.ID, "letter-function").text == "flaky"
    assert "the flag says broken" in browser.find_element(By.ID, "letter-error").text
    payload = json.loads(browser.find_element(By.ID, "payload").text)
    assert payload == {"id": 1, "note": "order 1"}
    assert "\n  " in browser.find_element(By.ID, "payload").text  # indented
    assert "RuntimeError" in browser.find_element(By.ID, "traceback").text
    screenshot(browser, "dead-letter")

    # The cause fixed, every letter of the filter retried: the host runs them.
    db.cursor().execute("UPDATE flags SET broken = FALSE")
    browser.back()
    browser.find_element(By.ID, "q").send_keys("order")
    browser.find_element(By.ID, "apply").click()
    arrive(browser, "q=order")
    browser.find_element(By.ID, "retry-matching").click()
    arrive(browser, "/dead-letters/retry?")
    assert browser.find_element(By.ID, "matching").text.startswith(
        "5 dead letters of function flaky whose error or payload holds order")
    browser.find_element(By.ID, "confirm").click()
    arrive(browser, "/dead-letters?")
    assert browser.find_element(By.CSS_SELECTOR, ".flash").text == "5 dead letters queued again"
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM results") == 5, timeout=30,
               what="the 5 retried jobs to complete")
    assert letters(db, "flaky") == []
    assert len(letters(db, "doomed")) == 1  # outside the filter: left alone
    assert "ada (session) retried dead letters up to id" in console.log()

    # A viewer sees the letters, but no action, and is refused one.
    log_in(browser, console, "vic")
    doomed = letters(db, "doomed")[0]
    browser.get(f"{console.url}/dead-letters/{doomed}")
    assert browser.find_element(By.ID, "letter-function").text == "doomed"
    browser.implicitly_wait(0)
    assert not browser.find_elements(By.ID, "retry-one")
    browser.get(f"{console.url}/dead-letters/{doomed}/retry")
    assert browser.find_element(By.ID, "error-code").text == "403"
    assert "only an admin" in browser.find_element(By.ID, "error-message").text
    assert letters(db, "doomed") == [doomed]
    assert os.path.getsize(DOCS / "console-overview.png") > 10_000


def test_in_a_browser_the_schedules_page_shows_each_slot_that_fired(
        sandbox: Sandbox, db: Any, host_factory: Any, console_factory: Any,
        browser: Any) -> None:
    from datetime import datetime

    from selenium.webdriver.common.by import By

    db.cursor().execute("CREATE TABLE ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                        "slot VARCHAR(40))")
    config = host_config(sandbox, db.database, {
        "tick": {"sql": "INSERT INTO ticks (slot) VALUES (%(slot)s)", "accept": "ledger"}},
        schedules=[{"name": "heartbeat", "function": "tick", "every": "1s"},
                   {"name": "nightly", "function": "tick", "cron": "30 2 * * *",
                    "timezone": "Europe/Paris", "catch_up": "all"}])
    host = host_factory(config)
    console = console_factory({**config, "host": {**config["host"],
                                                  "console": {"users": USERS}}})
    log_in(browser, console, "vic")
    row = 'table.schedules tr[data-schedule="heartbeat"]'
    assert text_of(browser, f"{row} .leader") in ("led", "none")  # the overview's section
    browser.find_element(By.LINK_TEXT, "Schedules").click()
    arrive(browser, "/schedules")
    assert text_of(browser, f"{row} td:nth-child(2)") == "tick"
    assert text_of(browser, f"{row} .timetable") == "every 1s"
    nightly = 'table.schedules tr[data-schedule="nightly"]'
    assert text_of(browser, f"{nightly} .timetable") == "cron '30 2 * * *' Europe/Paris"
    assert text_of(browser, f"{nightly} td:nth-child(4)") == "all"
    assert text_of(browser, f"{nightly} .last-slot") == "never"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d 02:30:00\+0[12]:00",
                        text_of(browser, f"{nightly} .next-slot") or "")

    def shown_slot() -> datetime | None:
        stamp = browser.execute_script(
            "const e = document.querySelector(arguments[0]); "
            "return e && e.getAttribute('datetime');", f"{row} .last-slot time")
        return datetime.fromisoformat(stamp) if stamp else None

    def ran() -> set[datetime]:
        cursor = db.cursor()
        cursor.execute("SELECT slot FROM ticks")
        return {datetime.fromisoformat(slot) for (slot,) in cursor.fetchall()}

    # The page refreshes itself: the slot it shows fired, and its job ran.
    wait_until(lambda: (slot := shown_slot()) is not None and slot in ran(), timeout=20,
               what="the schedules page to show a slot whose job ran")
    assert (text_of(browser, f"{row} .fired-by") or "").endswith(f":{host.pid}")
    assert text_of(browser, f"{row} .leader") == "led (connection " + str(
        scalar(db, "SELECT IS_USED_LOCK(%s)", f"workerhost:{db.database}:heartbeat")) + ")"
    screenshot(browser, "schedules")

    # The host stopped, nobody leads: the page says so.
    assert host.stop() == 0
    wait_until(lambda: text_of(browser, f"{row} .leader") == "none: no host holds its lock",
               timeout=15, what="the page to say that no host leads the schedule")


# -- pages by key --------------------------------------------------------------------------


def test_ledger_and_dead_letters_are_paged_by_key_through_every_row(db: Any) -> None:
    from workerhost.store import ledger_pages, schema
    from workerhost.store import letters as letters_store
    from workerhost.store.db import cursor as shared_cursor

    shared_cursor(db)  # the statements below share the connection's cursor, as the host's do
    for statement in schema.schema_statements():
        db.cursor().execute(statement)
    cursor = db.cursor()
    # Rows 1..90: due, leased, delayed in turn.
    for i in range(1, 91):
        cursor.execute(
            f"INSERT INTO {schema.LEDGER} (`function`, payload, not_before, ships) VALUES "
            "(%s, %s, NOW(6) + INTERVAL %s SECOND, %s)",
            (f"fn{i % 2}", f'{{"id": {i}}}', (0, 60, 60)[i % 3] - (1 if i % 3 == 0 else 0),
             1 if i % 3 == 1 else 0))
        cursor.execute(
            f"INSERT INTO {schema.DEAD_LETTERS} (`function`, payload, attempts, error) VALUES "
            "(%s, %s, 1, %s)", (f"fn{i % 2}", f'{{"id": {i}}}',
                                "50%_off" if i % 10 == 0 else "boom"))

    def walk(state: str | None, limit: int, scan: int, function: str | None = None,
             search: str | None = None) -> list[int]:
        seen: list[int] = []
        after: int | None = 0
        while after is not None:
            rows, after = ledger_pages.ledger_page(db, state, after, limit, scan, 10, function,
                                                   search)
            seen += [int(row[0]) for row in rows]
        return seen

    assert walk(None, 7, 20) == list(range(1, 91))
    assert walk("due", 7, 20) == [i for i in range(1, 91) if i % 3 == 0]
    assert walk("leased", 4, 11) == [i for i in range(1, 91) if i % 3 == 1]
    assert walk("delayed", 50, 13) == [i for i in range(1, 91) if i % 3 == 2]
    assert walk(None, 7, 20, "fn1") == list(range(1, 91, 2))
    assert walk("due", 5, 9, "fn0") == [i for i in range(1, 91) if i % 6 == 0]
    assert walk(None, 4, 17, None, '"id": 4') == [4, *range(40, 50)]
    assert walk(None, 4, 17, "fn1", '"id": 4') == [41, 43, 45, 47, 49]
    assert walk(None, 4, 17, None, "_") == []  # a wildcard of LIKE, searched as itself

    def newest(state: str | None, limit: int, scan: int, function: str | None = None) -> list[int]:
        seen: list[int] = []
        after: int | None = 0
        while after is not None:
            rows, after = ledger_pages.ledger_page(db, state, after, limit, scan, 10, function,
                                             newest=True)
            seen += [int(row[0]) for row in rows]
        return seen

    assert newest(None, 7, 20) == list(range(90, 0, -1))
    assert newest("leased", 4, 11) == [i for i in range(90, 0, -1) if i % 3 == 1]
    assert newest("due", 5, 9, "fn0") == [i for i in range(90, 0, -1) if i % 6 == 0]
    assert ledger_pages.functions_seen(db, 1) == {"fn0", "fn1"}  # the dead letters hold both

    def letters_of(function: str | None, search: str | None) -> list[int]:
        seen: list[int] = []
        before = None
        while True:
            rows = letters_store.dead_letter_page(db, function, search, before, None, 8, 10)
            seen += [int(row[0]) for row in rows]
            if len(rows) < 8:
                return seen
            before = int(rows[-1][0])

    assert letters_of(None, None) == list(range(90, 0, -1))
    assert letters_of("fn1", None) == list(range(89, 0, -2))
    # % and _ are searched as themselves, not as wildcards.
    assert letters_of(None, "50%_") == list(range(90, 0, -10))
    assert letters_of("fn0", "id\": 4") == [48, 46, 44, 42, 40, 4]
    assert letters_store.count_dead_letters(db, None, "50%_", 0, 45) == 4


# -- rates from the host's metrics ---------------------------------------------------------


def test_rates_per_minute_come_from_two_readings_of_the_hosts_metrics() -> None:
    from workerhost.config.converters import Server
    from workerhost.console import sampling

    def exposition(complete: int, retry: int, dead: int) -> str:
        return ("# TYPE workerhost_jobs counter\n"
                f'workerhost_jobs_total{{function="resize",outcome="complete"}} {complete}\n'
                f'workerhost_jobs_total{{function="resize",outcome="retry"}} {retry}\n'
                f'workerhost_jobs_total{{function="mail",outcome="dead"}} {dead}\n'
                f'workerhost_jobs_total{{function="mail",outcome="timeout"}} 7\n')

    first = (100.0, sampling.job_counts(exposition(10, 1, 0)))
    second = (130.0, sampling.job_counts(exposition(70, 4, 2)))
    rates = sampling.rates_between(first, second)
    assert rates.completed == {"resize": 120.0}  # 60 jobs in 30 s
    assert rates.failed == {"resize": 6.0, "mail": 4.0}  # a timeout is counted once, later
    assert rates.seconds == 30.0
    # A restarted host's counters start again from zero: counted from there, never negative.
    again = sampling.rates_between(second, (160.0, sampling.job_counts(exposition(5, 0, 0))))
    assert again.completed == {"resize": 10.0}
    assert sampling.metrics_url(Server("0.0.0.0", 9464)) == "http://127.0.0.1:9464/metrics"


def test_sigterm_leaves_waitress_loop_even_inside_a_connections_handler() -> None:
    """The stop signal's exception, raised while waitress runs a connection's handler (as a
    signal's can be), must leave the loop: waitress logs and swallows any other."""
    from waitress import wasyncore

    from workerhost import console

    class Channel:
        def handle_read_event(self) -> None:
            raise console._Stop

        def handle_error(self) -> None:
            raise AssertionError("waitress swallowed the stop")

    with pytest.raises(console._Stop):
        wasyncore.read(Channel())


# -- charts, a page per ledger row, selection, the JSON API ------------------------------------


def delayed_row(db: Any, function: str, payload: str, failures: int, error: str) -> int:
    """A ledger row whose retry waits a day, with `failures` failed attempts so far."""
    from workerhost.model import job

    cursor = db.cursor()
    cursor.execute("INSERT INTO workerhost_outbox (`function`, payload, not_before) VALUES "
                   "(%s, %s, NOW(6) + INTERVAL 1 DAY)", (function, payload))
    ident = int(cursor.lastrowid)
    cursor.execute("INSERT INTO workerhost_attempts (job_key, failures, last_error, traceback) "
                   "VALUES (%s, %s, %s, %s)", (job.ledger_key(function, ident), failures,
                                               error, f"Traceback: {error}"))
    return ident


def test_in_a_browser_the_overview_charts_the_jobs_that_ran(
        sandbox: Sandbox, db: Any, host_factory: Any, console_factory: Any,
        browser: Any) -> None:
    db.cursor().execute("CREATE TABLE results (id BIGINT PRIMARY KEY, attempt INT, "
                        "unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1)")
    config = host_config(sandbox, db.database, {
        "record": {"python": "sample_handlers:record"},
        "mixed": {"python": "sample_handlers:record_unless_told_to_fail",
                  "retries": {"attempts": 1}},
    }, host={"metrics": f"127.0.0.1:{free_port()}", "console": {"users": USERS}})
    host_factory(config)
    console = console_factory(config)
    log_in(browser, console, "vic")

    def points(chart: str) -> int:
        found = browser.execute_script(
            "const f = document.querySelector(`figure[data-chart='${arguments[0]}']`); "
            "return f && f.querySelectorAll('svg circle.point').length;", chart)
        return int(found or 0)

    # The ledger is sampled from the start; jobs need two readings of the host's metrics.
    wait_until(lambda: points("backlog") >= 1, timeout=20, what="a point of the ledger's rows")
    assert points("completed") == 0
    assert text_of(browser, "figure[data-chart='completed'] p.quiet") == "no samples yet"
    wait_until(lambda: "rates show after the next" in (text_of(browser, "#rates-note") or "")
               or not text_of(browser, "#rates-note"), timeout=30,
               what="the console's first reading of the host's metrics")
    submit(sandbox.gearman_server, "record", [{"id": i} for i in range(20)])
    submit(sandbox.gearman_server, "mixed", [{"id": 100 + i, "fail": i < 3} for i in range(6)])
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM results") == 23, what="23 rows")
    def jobs(chart: str) -> dict[str, float]:
        """Each line's jobs per minute, summed over its points (their titles)."""
        titles = browser.execute_script(
            "return [...document.querySelectorAll(`figure[data-chart='${arguments[0]}'] "
            "circle title`)].map(t => t.textContent);", chart)
        summed: dict[str, float] = {}
        for title in titles:
            found = re.fullmatch(r"(\w+), \d\d:\d\d UTC: ([\d.]+) jobs/min", title)
            assert found, title
            summed[found.group(1)] = summed.get(found.group(1), 0) + float(found.group(2))
        return summed

    # The page redraws itself (no reload), a point a minute per function.
    wait_until(lambda: jobs("completed") == {"record": 20, "mixed": 3}, timeout=30,
               what="the chart of completed jobs to draw the jobs that ran")
    wait_until(lambda: jobs("failed") == {"record": 0, "mixed": 3}, timeout=10,
               what="the chart of failed jobs")
    assert points("completed") >= 2
    # The charts alone for the README: the shared gearmand's queues of other tests push them
    # past a whole page's picture.
    browser.execute_script("document.getElementById('charts').scrollIntoView();")
    browser.find_element("id", "charts").screenshot(str(DOCS / "console-charts.png"))
    # The day: the same samples, a point per five minutes.
    browser.find_element("link text", "last day").click()
    arrive(browser, "span=day")
    wait_until(lambda: browser.execute_script(
        "return document.querySelectorAll(`figure[data-chart='completed'] polyline`).length"),
        timeout=10, what="the day's chart")
    assert request(console.url + "/?span=week", user="vic").status == 400


def test_in_a_browser_a_ledger_rows_page_opens_from_the_ledger_and_acts(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any,
        browser: Any) -> None:
    from selenium.webdriver.common.by import By

    password = sandbox.password
    ident = delayed_row(db, "vault", json.dumps({"id": 7, "dsn": f"mysql://app:{password}@db"}),
                        2, f"cannot connect with {password}")
    older = delayed_row(db, "vault", '{"id": 6}', 0, "")
    assert older > ident
    console = console_factory(stack)
    log_in(browser, console, "ada")
    browser.find_element(By.LINK_TEXT, "Ledger").click()
    arrive(browser, "/ledger")
    browser.find_element(By.ID, "newest-first").click()
    arrive(browser, "order=newest")
    ids = [int(row.get_attribute("data-id"))
           for row in browser.find_elements(By.CSS_SELECTOR, "table.ledger tbody tr")]
    assert ids[:2] == [older, ident] and ids == sorted(ids, reverse=True)
    functions = [option.text for option in browser.find_elements(By.CSS_SELECTOR,
                                                                   "#function option")]
    assert "vault" in functions  # no handler of the file: seen in the ledger
    browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{ident}"] a').click()
    arrive(browser, f"/ledger/{ident}")
    assert browser.find_element(By.ID, "row-function").text == "vault"
    assert browser.find_element(By.ID, "row-state").text == "delayed"
    assert browser.find_element(By.ID, "row-attempts").text.startswith("2 failed, the first ")
    assert browser.find_element(By.ID, "row-error").text == "cannot connect with ***"
    assert json.loads(browser.find_element(By.ID, "payload").text) == {
        "id": 7, "dsn": "mysql://app:***@db"}
    assert password not in browser.page_source
    screenshot(browser, "ledger-row")

    # Run now: due at once, and shipped by the relay.
    browser.find_element(By.ID, "run-now").click()
    arrive(browser, f"/ledger/{ident}/run")
    browser.find_element(By.ID, "confirm").click()
    wait_until(lambda: urllib.parse.urlparse(browser.current_url).path == f"/ledger/{ident}",
               timeout=10, what="the row's page again")
    assert browser.find_element(By.CSS_SELECTOR, ".flash").text == (
        f"ledger row {ident} made due now")
    assert browser.find_element(By.ID, "row-state").text in ("due", "leased")
    # To the dead letters, with its failed attempts: the other row stays.
    browser.find_element(By.ID, "bury").click()
    arrive(browser, f"/ledger/{ident}/bury")
    browser.find_element(By.ID, "confirm").click()
    arrive(browser, "/ledger")
    assert browser.find_element(By.CSS_SELECTOR, ".flash").text == (
        f"ledger row {ident} moved to the dead letters")
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE id = %s", ident) == 0
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE id = %s", older) == 1
    cursor = db.cursor()
    cursor.execute("SELECT attempts, error FROM workerhost_dead_letters WHERE `function` = "
                   "'vault'")
    assert cursor.fetchall() == [(2, "moved to the dead letters by ada (console)")]
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_attempts WHERE job_key LIKE 'vault%'") == 1
    assert f"ada (session) ledger row {ident} moved to the dead letters: done" in console.log()
    browser.get(f"{console.url}/ledger/{ident}")
    assert browser.find_element(By.ID, "error-code").text == "404"
    # A viewer sees a row, and no action.
    log_in(browser, console, "vic")
    browser.get(f"{console.url}/ledger/{older}")
    assert browser.find_element(By.ID, "row-state").text == "delayed"
    browser.implicitly_wait(0)
    assert not browser.find_elements(By.ID, "run-now")
    assert request(f"{console.url}/ledger/{older}/bury", user="vic").status == 403


def test_in_a_browser_every_page_fits_a_phone_and_follows_a_dark_scheme(
        db: Any, stack: dict[str, Any], console_factory: Any, browser: Any) -> None:
    row = delayed_row(db, "vault", json.dumps({"note": "x" * 300}), 1, "y" * 300)
    console = console_factory(stack)
    log_in(browser, console, "ada")

    def background() -> str:
        colour: str = browser.execute_script(
            "return getComputedStyle(document.body).backgroundColor;")
        return colour

    assert background() == "rgb(246, 248, 250)"
    browser.set_window_size(400, 900)
    width = browser.execute_script("return window.innerWidth")
    for page in ("/", "/dead-letters", "/ledger", f"/ledger/{row}", f"/ledger/{row}/cancel",
                 f"/dead-letters/{letters(db, 'flaky')[0]}", "/handlers", "/workers",
                 "/schedules", "/functions/pause?function=flaky"):
        browser.get(console.url + page)
        wide = browser.execute_script("return document.documentElement.scrollWidth")
        assert wide <= width, (page, wide, width)  # no sideways scrolling of the page
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    browser.get(console.url + "/")
    assert background() == "rgb(18, 23, 29)"


def test_in_a_browser_two_selected_dead_letters_are_retried_and_the_others_stay(
        db: Any, stack: dict[str, Any], console_factory: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    console = console_factory(stack)
    db.cursor().execute("UPDATE flags SET broken = FALSE")
    flaky, doomed = letters(db, "flaky"), letters(db, "doomed")
    chosen = [flaky[1], flaky[3]]
    log_in(browser, console, "ada")
    browser.find_element(By.LINK_TEXT, "Dead letters").click()
    arrive(browser, "/dead-letters")
    for ident in chosen:
        browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{ident}"] input[type=checkbox]'
                             ).click()
    browser.find_element(By.ID, "retry-selected").click()
    arrive(browser, "/dead-letters/selected/retry?")
    assert browser.find_element(By.ID, "matching").text == (
        f"2 dead letters: {chosen[0]}, {chosen[1]}.")
    browser.find_element(By.ID, "confirm").click()
    arrive(browser, "/dead-letters")
    wait_until(lambda: "/selected/" not in browser.current_url, timeout=10, what="the list")
    assert browser.find_element(By.CSS_SELECTOR, ".flash").text == "2 dead letters queued again"
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM results") == 2, timeout=30,
               what="the 2 retried jobs to complete")
    assert letters(db, "flaky") == [i for i in flaky if i not in chosen]
    assert letters(db, "doomed") == doomed
    assert (f"ada (session) retried dead letters {chosen[0]}, {chosen[1]}: 2 queued again"
            in console.log())

    # Ids are checked; a POST needs its token and an admin.
    jar = http.cookiejar.CookieJar()
    for query in ("", "?id=abc", "?id=-1", "?id=1e3", "?id=" + "9" * 30,
                  "?" + "&".join(f"id={i}" for i in range(1, 502))):
        answer = request(f"{console.url}/dead-letters/selected/purge{query}", user="ada")
        assert answer.status == 400 and "id: " in answer.body, query
    purge = f"{console.url}/dead-letters/selected/purge"
    assert request(purge, user="ada", jar=jar, data={"id": str(doomed[0])}).status == 400
    viewer = http.cookiejar.CookieJar()
    assert request(purge, user="vic", jar=viewer, data={
        "id": str(doomed[0]), "csrf_token": token(console, "vic", viewer)}).status == 403
    assert letters(db, "doomed") == doomed
    done = request(purge, user="ada", jar=jar, data={
        "id": str(doomed[0]), "csrf_token": token(console, "ada", jar)})
    assert done.status == 302 and letters(db, "doomed") == []


def test_the_api_answers_what_the_pages_show_with_secrets_masked(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    password = sandbox.password
    cursor = db.cursor()
    cursor.execute("INSERT INTO workerhost_dead_letters (`function`, payload, attempts, error) "
                   "VALUES ('vault', %s, 1, %s)", (f'{{"k":"{password}"}}', f"bad {password}"))
    vault = int(cursor.lastrowid)
    row = delayed_row(db, "vault", f'{{"k":"{password}"}}', 3, f"refused {password}")
    console = console_factory(stack)

    def api(path: str) -> Any:
        answer = request(console.url + path, user="vic")
        assert answer.status == 200, (path, answer.body)
        assert answer.headers["Content-Type"] == "application/json"
        assert password not in answer.body, path
        return json.loads(answer.body)

    def shown_ids(page: str) -> list[int]:
        return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', request(
            console.url + page, user="vic").body)]

    found = api("/api/dead-letters")
    assert [letter["id"] for letter in found["letters"]] == shown_ids("/dead-letters")
    assert [letter["function"] for letter in found["letters"]].count("flaky") == 5
    letter = api(f"/api/dead-letters/{vault}")
    assert (letter["error"], letter["payload"]) == ("bad ***", '{"k":"***"}')
    assert api("/api/dead-letters?function=vault&q=bad")["letters"][0]["error"] == "bad ***"
    assert re.search(r"<option\s*>vault</option>",  # no handler of the file: seen
                     request(console.url + "/dead-letters", user="vic").body)

    ledger = api("/api/ledger?order=newest")
    assert [line["id"] for line in ledger["rows"]] == shown_ids("/ledger?order=newest")
    assert ledger["rows"][0]["id"] == row
    detail = api(f"/api/ledger/{row}")
    assert (detail["function"], detail["state"], detail["payload"]) == (
        "vault", "delayed", '{"k":"***"}')
    assert detail["attempts"]["failures"] == 3
    assert detail["attempts"]["last_error"] == "refused ***"
    overview = api("/api/overview")
    assert overview["dead_letters"] == {"flaky": 5, "doomed": 1, "vault": 1}
    assert overview["servers"][0]["functions"][waiting(db)]["queued"] == 3
    assert "the host serves no metrics" in overview["rates_note"]

    # The same logins; GET only; errors as JSON.
    assert request(console.url + "/api/overview").status == 401
    missing = request(f"{console.url}/api/ledger/{row + 1000}", user="vic")
    assert missing.status == 404 and json.loads(missing.body)["code"] == 404
    assert request(console.url + "/api/ledger?state=lost", user="vic").status == 400
    jar = http.cookiejar.CookieJar()
    sent = request(f"{console.url}/api/dead-letters/{vault}", user="ada", jar=jar,
                   data={"csrf_token": token(console, "ada", jar)})
    assert sent.status == 405
    assert letters(db, "vault") == [vault]


# -- job control: a row a worker holds, pausing a function, cancelling a job -------------------


def test_a_ledger_row_a_worker_holds_is_left_alone_by_every_action(
        sandbox: Sandbox, db: Any, stack: dict[str, Any], console_factory: Any) -> None:
    """A worker running a row's job holds the row locked until its transaction ends: every
    action on the row finds it held at once (NOWAIT: MariaDB answers 1205, MySQL 3572), leaves
    it as it is, and the row's page says so; once the worker's transaction ends, it acts."""
    ident = delayed_row(db, "vault", '{"id": 1}', 1, "boom")
    console = console_factory(stack)
    worker = sandbox.connect(database=db.database, autocommit=False)
    held = worker.cursor()
    held.execute("SELECT id FROM workerhost_outbox WHERE id = %s FOR UPDATE", (ident,))
    held.fetchall()
    jar = http.cookiejar.CookieJar()
    try:
        for verb in ("run", "bury", "cancel"):
            started = time.monotonic()
            answer = request(f"{console.url}/ledger/{ident}/{verb}", user="ada", jar=jar,
                             data={"csrf_token": token(console, "ada", jar)})
            assert time.monotonic() - started < 5, "NOWAIT: no lock wait"
            assert answer.status == 302, (verb, answer.body)
            assert urllib.parse.urlparse(answer.headers["Location"]).path == f"/ledger/{ident}"
            page = request(f"{console.url}/ledger/{ident}", user="ada", jar=jar)
            assert (f"ledger row {ident} is held by a worker running its job: try again when "
                    "it ends") in page.body, verb
            assert f"ada (basic) ledger row {ident} " in console.log()
        assert console.log().count(f"ledger row {ident} ") == 3
        assert all(line.endswith(": held") for line in console.log().splitlines()
                   if f"ledger row {ident} " in line)
        assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE id = %s AND "
                      "not_before > NOW(6) + INTERVAL 1 HOUR", ident) == 1, "left as it was"
        assert scalar(db, "SELECT COUNT(*) FROM workerhost_dead_letters WHERE `function` = "
                      "'vault'") == 0
    finally:
        worker.rollback()
        worker.close()
    done = request(f"{console.url}/ledger/{ident}/cancel", user="ada", jar=jar,
                   data={"csrf_token": token(console, "ada", jar)})
    assert done.status == 302 and urllib.parse.urlparse(done.headers["Location"]).path == (
        "/ledger")
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE id = %s", ident) == 0
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_attempts WHERE job_key LIKE 'vault%'") == 0


def click(driver: Any, css: str) -> None:
    """Click what `css` finds, found and clicked in one step: the overview swaps its figures
    every few seconds, and an element found before a swap is stale after it."""
    wait_until(lambda: driver.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", css),
        timeout=10, what=f"{css} to click")


def test_in_a_browser_an_admin_pauses_a_function_cancels_a_job_and_resumes(
        sandbox: Sandbox, db: Any, host_factory: Any, console_factory: Any,
        browser: Any) -> None:
    from selenium.webdriver.common.by import By

    from workerhost.store import ledger

    db.cursor().execute("CREATE TABLE results (id BIGINT PRIMARY KEY, attempt INT, "
                        "unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1)")
    config = host_config(sandbox, db.database, {"record": {"python": "sample_handlers:record"}},
                         host={"console": {"users": USERS}})
    host_factory(config)
    console = console_factory(config)

    def ran() -> list[int]:
        cursor = db.cursor()
        cursor.execute("SELECT id FROM results ORDER BY id")
        return [int(row[0]) for row in cursor.fetchall()]

    def parked() -> int:
        return int(scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE `function` = "
                          "'record' AND not_before >= '9999-01-01'"))

    log_in(browser, console, "ada")
    record = 'table.functions tr[data-function="record"]'
    click(browser, f"{record} a.pause")
    arrive(browser, "/functions/pause?function=record")
    browser.find_element(By.ID, "confirm").click()
    wait_until(lambda: urllib.parse.urlparse(browser.current_url).path == "/", timeout=10,
               what="the overview again")
    assert browser.find_element(By.CSS_SELECTOR, ".flash").text == (
        "record paused on every host; 0 waiting jobs parked in the ledger until it is resumed")
    assert text_of(browser, 'table.paused-functions tr[data-function="record"] td') == "record"
    assert text_of(browser, f"{record} .paused") == "paused"
    assert "ada (session): record paused on every host" in console.log()
    paused = json.loads(request(console.url + "/api/overview", user="vic").body)["paused"]
    assert [(p["function"], p["by"]) for p in paused] == [("record", "ada (console)")]

    # Its new jobs are not run: the worker that gets each one parks it in the ledger.
    kept = ledger.enqueue(db, "record", b'{"id": 1}', None)
    doomed = ledger.enqueue(db, "record", b'{"id": 2}', None)
    wait_until(lambda: parked() == 2, timeout=30, what="both jobs parked in the ledger")
    assert ran() == []
    # One of them cancelled from its row's page: it never runs.
    browser.get(f"{console.url}/ledger/{doomed}")
    assert browser.find_element(By.ID, "row-state").text == "paused"
    browser.find_element(By.ID, "cancel-job").click()
    arrive(browser, f"/ledger/{doomed}/cancel")
    browser.find_element(By.ID, "confirm").click()
    arrive(browser, "/ledger")
    wait_until(lambda: "/cancel" not in browser.current_url, timeout=10, what="the ledger")
    assert browser.find_element(By.CSS_SELECTOR, ".flash").text == (
        f"ledger row {doomed} cancelled: its job never runs")
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE id = %s", doomed) == 0
    assert f"ada (session) ledger row {doomed} cancelled: its job never runs: done" in (
        console.log())

    # Resumed: the other one runs, once.
    browser.get(console.url + "/")
    click(browser, 'table.paused-functions tr[data-function="record"] a.resume')
    arrive(browser, "/functions/resume?function=record")
    browser.find_element(By.ID, "confirm").click()
    wait_until(lambda: urllib.parse.urlparse(browser.current_url).path == "/", timeout=10,
               what="the overview again")
    assert browser.find_element(By.CSS_SELECTOR, ".flash").text == (
        "record resumed; 1 parked job due again")
    wait_until(lambda: ran() == [1], timeout=30, what="the job kept to run once resumed")
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM workerhost_outbox") == 0, timeout=30,
               what="an empty ledger")
    assert ran() == [1] and scalar(db, "SELECT runs FROM results WHERE id = 1") == 1
    assert kept < doomed
    browser.implicitly_wait(0)
    wait_until(lambda: not browser.find_elements(By.CSS_SELECTOR, "table.paused-functions"),
               timeout=10, what="the overview to list no paused function")
    assert json.loads(request(console.url + "/api/overview", user="vic").body)["paused"] == []

    # A viewer sees neither button, and is refused each action.
    browser.implicitly_wait(5)
    log_in(browser, console, "vic")
    browser.implicitly_wait(0)
    assert text_of(browser, f"{record} td") == "record"
    assert not browser.find_elements(By.CSS_SELECTOR, "a.pause, a.resume")
    row = ledger.enqueue(db, "waiting_for_nobody", b"{}", None, delay=3600)
    browser.get(f"{console.url}/ledger/{row}")
    assert browser.find_element(By.ID, "row-state").text == "delayed"
    assert not browser.find_elements(By.ID, "cancel-job")
    jar = http.cookiejar.CookieJar()
    for path, form in (("/functions/pause", {"function": "record"}),
                       ("/functions/resume", {"function": "record"}),
                       (f"/ledger/{row}/cancel", {})):
        assert request(f"{console.url}{path}?function=record", user="vic").status == 403, path
        refused = request(console.url + path, user="vic", jar=jar,
                          data={**form, "csrf_token": token(console, "vic", jar)})
        assert refused.status == 403 and "only an admin" in refused.body, path
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_paused") == 0
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_outbox WHERE id = %s", row) == 1
    # And an admin's POST without its token changes nothing either.
    assert request(console.url + "/functions/pause", user="ada", data={
        "function": "record"}).status == 400
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_paused") == 0


# -- the charts' history in the database -------------------------------------------------------


def chart_jobs(body: str, chart: str) -> dict[str, float]:
    """A chart's jobs per minute by function, summed over its points (their titles)."""
    figure = re.search(rf'<figure class="chart" data-chart="{chart}".*?</figure>', body,
                       re.DOTALL)
    assert figure, body
    summed: dict[str, float] = {}
    for name, value in re.findall(r"<title>([^<,]+), \d\d:\d\d UTC: ([\d.]+) jobs/min</title>",
                                  figure.group(0)):
        summed[name] = summed.get(name, 0) + float(value)
    return summed


def test_the_charts_history_outlives_a_restart_of_the_console(
        sandbox: Sandbox, db: Any, host_factory: Any, console_factory: Any) -> None:
    from workerhost.console import samples

    db.cursor().execute("CREATE TABLE results (id BIGINT PRIMARY KEY, attempt INT, "
                        "unique_key VARCHAR(255), runs INT NOT NULL DEFAULT 1)")
    config = host_config(sandbox, db.database, {"record": {"python": "sample_handlers:record"}},
                         host={"metrics": f"127.0.0.1:{free_port()}",
                               "console": {"users": USERS}})
    host_factory(config)
    first = console_factory(config)

    def overview(console: Console) -> str:
        answer = request(console.url + "/", user="vic")
        assert answer.status == 200, answer.body
        return answer.body

    wait_until(lambda: "rates show after the next" in overview(first), timeout=30,
               what="the console's first reading of the host's metrics")
    submit(sandbox.gearman_server, "record", [{"id": i} for i in range(12)])
    wait_until(lambda: scalar(db, "SELECT COUNT(*) FROM results") == 12, what="12 jobs")
    wait_until(lambda: chart_jobs(overview(first), "completed") == {"record": 12}, timeout=30,
               what="the chart to count the 12 jobs")
    # The sampler writes at most once a minute: the jobs are in the table within one more
    # (while someone looks, as here: idle, it reads, and writes, once a minute).
    def kept() -> bool:
        time.sleep(1)  # a viewer's pace, not 20 pages a second
        return bool(overview(first)) and scalar(db, "SELECT SUM(completed) FROM "
                                                "workerhost_samples WHERE `function` = "
                                                "'record'") == 12

    wait_until(kept, timeout=samples.KEEP_EVERY + 30, what="the sampler to keep the 12 jobs")
    assert scalar(db, "SELECT COUNT(*) FROM workerhost_samples WHERE `function` = '' AND "
                  "backlog IS NOT NULL") >= 1, "the ledger's counts are kept too"
    # Killed (nothing written on the way out), and started again: the charts come back. No
    # job runs meanwhile, so the new console's own readings count none.
    first.process.kill()
    first.process.wait(10)
    second = console_factory(config)
    wait_until(lambda: chart_jobs(overview(second), "completed") == {"record": 12},
               timeout=15, what="the restarted console's chart to show the 12 jobs")
    day = request(second.url + "/?span=day", user="vic").body
    assert re.search(r'data-chart="completed".*?data-series="record">\s*<polyline', day,
                     re.DOTALL), "the day's chart draws them too"


def test_the_charts_samples_in_the_database_stay_a_day_and_come_back_whole(
        sandbox: Sandbox, db: Any) -> None:
    """Two days of a busy console, written as the sampler writes them: the table holds a day
    (and at most PRUNE_EVERY minutes more) of rows, one per minute and function, and a new
    History read from it draws what the old one drew."""
    from workerhost.console import charts, samples
    from workerhost.store import schema
    from workerhost.store.db import Database

    for statement in schema.schema_statements():
        db.cursor().execute(statement)
    database = Database({}, connect=lambda: db)
    start = 1_800_000_000.0  # a whole minute (30,000,000 since the epoch)
    now, mono = [start], [0.0]
    history = charts.History(wall=lambda: now[0])
    keeper = samples.Keeper(history, clock=lambda: mono[0])
    functions = ("resize", "mail", "report")

    def rows() -> tuple[int, int, int]:
        cursor = db.cursor()
        cursor.execute("SELECT COUNT(*), MIN(epoch_minute), MAX(epoch_minute) FROM "
                       "workerhost_samples")
        count, low, high = cursor.fetchone()
        db.commit()
        return int(count), int(low or 0), int(high or 0)

    for step in range(2 * charts.MINUTES_KEPT + 90):
        now[0] = start + 60 * step + 30
        history.add_jobs(now[0], {name: step % 7 + 1 + i for i, name in enumerate(functions)},
                         {"mail": step % 3})
        history.add_ledger(now[0], 1000 + step, 12.5)
        if step % 5 == 4:  # five minutes a write, to keep the test short
            mono[0] += 5 * samples.KEEP_EVERY
            keeper.keep(database)
    count, low, high = rows()
    last = int(now[0] // 60)
    assert high == last
    assert last - low + 1 <= charts.MINUTES_KEPT + samples.PRUNE_EVERY
    assert count == (last - low + 1) * (len(functions) + 1), "a row per minute and function"
    # At most once every KEEP_EVERY: a change a moment later waits for the next write.
    history.add_jobs(now[0], {"resize": 1000}, {})
    keeper.keep(database)
    cursor = db.cursor()
    cursor.execute("SELECT completed FROM workerhost_samples WHERE epoch_minute = %s AND "
                   "`function` = 'resize'", (last,))
    assert cursor.fetchone()[0] < 1000
    db.commit()
    mono[0] += samples.KEEP_EVERY
    keeper.keep(database)
    cursor.execute("SELECT completed FROM workerhost_samples WHERE epoch_minute = %s AND "
                   "`function` = 'resize'", (last,))
    assert cursor.fetchone()[0] >= 1000
    db.commit()

    again = charts.History(wall=history.wall)
    samples.Keeper(again).restore(database)
    for span in charts.SPANS:
        assert again.charts(span) == history.charts(span), span
