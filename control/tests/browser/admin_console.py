"""The administrator console in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium. Run by control/tests/browser.rs, which starts the
engine, the control service and a sink, and passes where they are in the environment.

Journeys: sign in (a wrong password first), add a domain and test its route, send a
message with smtplib and find it in tracking with its timeline, release a quarantined
message and see it reach the sink, see refused mail in the blocked tab, block a sender
and set a threshold (a bad one refused with its field named) and see the rules' hit
counts, import a directory (a bad line named), hold, release and delete a waiting
message in the queue, create a sub-account limited to another domain and see that it
cannot see this domain's mail, the queue or the global policy.
Screenshots of each page go to $SHOTS.
"""

import json
import os
import smtplib
import sys
import time
import urllib.request
from email.message import EmailMessage

from selenium.common.exceptions import NoSuchElementException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select

from common import browser, shot, step, wait

URL = os.environ["CONSOLE_URL"]
NAME = os.environ["ADMIN_NAME"]
PASSWORD = os.environ["ADMIN_PASSWORD"]
TOKEN = os.environ["API_TOKEN"]
SMTP = int(os.environ["SMTP_PORT"])
SINK = int(os.environ["SINK_PORT"])
SINK_REPORT = os.environ["SINK_REPORT"]


def sign_in(d, name, password):
    d.get(URL + "/")
    wait(d, EC.presence_of_element_located((By.NAME, "password")))
    d.find_element(By.NAME, "name").clear()
    d.find_element(By.NAME, "name").send_keys(name)
    d.find_element(By.NAME, "password").send_keys(password)
    d.find_element(By.CSS_SELECTOR, "section.login button").click()


def api(method, path, body=None):
    req = urllib.request.Request(URL + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read() or b"null")


def send(sender, rcpt, subject, body="Hello from the browser test.\n"):
    """Sends with smtplib, retrying while the engine has not got the new domain yet."""
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, rcpt, subject
    m.set_content(body)
    end = time.time() + 10
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", SMTP, timeout=20) as s:
                s.send_message(m)
            return
        except smtplib.SMTPRecipientsRefused:
            if time.time() > end:
                raise
            time.sleep(0.2)


def sink_received():
    try:
        with open(SINK_REPORT) as f:
            return json.load(f).get("received", 0)
    except (OSError, ValueError):
        return 0


def main():
    d = browser()
    try:
        step("a wrong password is refused")
        sign_in(d, NAME, "not the password")
        err = wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, ".error")))
        assert "not right" in err.text, err.text
        shot(d, "01-login")

        step("signing in opens the dashboard")
        sign_in(d, NAME, PASSWORD)
        wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "figure.chart svg")))
        assert "Mail in the last 24 hours" in d.page_source

        step("add a domain routed to the sink, and test its route")
        d.get(URL + "/domains")
        d.find_element(By.NAME, "name").send_keys("example.test")
        d.find_element(By.NAME, "route").send_keys(f"127.0.0.1:{SINK}")
        d.find_element(By.CSS_SELECTOR, "form.inline button").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "example.test added"))
        d.find_element(By.XPATH, "//tr[@id='d-example.test']//button[text()='Test delivery']").click()
        t = wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "pre.transcript")))
        assert "accepts mail" in t.text, t.text
        shot(d, "03-domains")

        step("a message sent with smtplib is tracked, delivered, with its timeline")
        subject = "Browser journey <b>bold?</b>"
        send("alice@sender.test", "bob@example.test", subject)
        d.get(URL + "/tracking")
        d.find_element(By.NAME, "sender").send_keys("alice@sender.test")
        end = time.time() + 10
        while True:
            d.find_element(By.CSS_SELECTOR, "form.search button").click()
            time.sleep(0.4)
            rows = d.find_elements(By.CSS_SELECTOR, "#results tbody tr")
            if rows and "delivered" in rows[0].text:
                break
            assert time.time() < end, d.find_element(By.ID, "results").text
        row = rows[0]
        assert subject in row.text, row.text
        # The subject is text: no element came out of it.
        assert not row.find_elements(By.TAG_NAME, "b"), row.get_attribute("innerHTML")
        shot(d, "04-tracking")
        row.find_element(By.LINK_TEXT, "timeline").click()
        wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "ol.timeline")))
        events = [li.find_element(By.TAG_NAME, "strong").text
                  for li in d.find_elements(By.CSS_SELECTOR, "ol.timeline li")]
        assert events[0] == "accepted" and "delivered" in events, events
        shot(d, "05-timeline")

        step("refused mail is in the blocked tab")
        try:
            with smtplib.SMTP("127.0.0.1", SMTP, timeout=20) as s:
                s.ehlo("spammer.test")
                s.mail("mallory@spammer.test")
                code, _ = s.rcpt("someone@not-ours.test")
                assert code == 550, code
        except smtplib.SMTPException:
            pass
        d.get(URL + "/tracking?traffic=blocked")
        end = time.time() + 10
        while "mallory@spammer.test" not in d.find_element(By.ID, "results").text:
            assert time.time() < end, d.find_element(By.ID, "results").text
            time.sleep(0.3)
            d.refresh()
        assert "relay_denied" in d.find_element(By.ID, "results").text
        shot(d, "06-blocked")

        step("a quarantined message is previewed as text and released to the sink")
        api("POST", "/api/v1/policy-rules",
            {"name": "hold-partner", "senders": ["hold@sender.test"], "action": "quarantine"})
        time.sleep(0.5)
        send("hold@sender.test", "bob@example.test", "Held <script>alert(1)</script>",
             "Please look at http://phish.test/login and <img src=http://tracker.test/p.gif>\n")
        before = sink_received()
        d.get(URL + "/held")
        end = time.time() + 10
        while "hold@sender.test" not in d.find_element(By.CSS_SELECTOR, "table.rows").text:
            assert time.time() < end, d.page_source
            time.sleep(0.3)
            d.refresh()
        shot(d, "07-quarantine")
        d.find_element(By.PARTIAL_LINK_TEXT, "Held").click()
        pre = wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "pre.preview")))
        assert "http://phish.test/login" in pre.text, pre.text
        # Nothing from the message became a link, an image or a script.
        assert not d.find_elements(By.CSS_SELECTOR, "main a[href*='phish'], main img, main script")
        shot(d, "08-preview")
        d.find_element(By.XPATH, "//button[text()='Release']").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "released"))
        end = time.time() + 15
        while sink_received() <= before:
            assert time.time() < end, "the released message did not reach the sink"
            time.sleep(0.2)

        step("policy: block a sender, thresholds checked, rules with their hit counts")
        d.get(URL + "/policy")
        d.find_element(By.NAME, "pattern").send_keys("spammer.test")
        Select(d.find_element(By.NAME, "action")).select_by_visible_text("blocked")
        d.find_element(By.XPATH, "//form[@action='/policy/senders']//button").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "spammer.test blocked"))
        box = d.find_element(By.NAME, "spam_threshold")
        box.clear()
        box.send_keys("lots")
        d.find_element(By.XPATH, "//form[@action='/policy/verdicts']//button").click()
        err = wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, ".error")))
        assert "spam_threshold" in err.text and "not a number" in err.text, err.text
        box = d.find_element(By.NAME, "spam_threshold")
        box.clear()
        box.send_keys("12")
        d.find_element(By.XPATH, "//form[@action='/policy/verdicts']//button").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "saved"))
        assert d.find_element(By.NAME, "spam_threshold").get_attribute("value") == "12.0"
        rule = d.find_element(By.XPATH, "//h2[@id='rules']/following-sibling::table[1]//tr[td[2]='hold-partner']")
        assert int(rule.find_elements(By.TAG_NAME, "td")[4].text) >= 1, rule.text
        shot(d, "18-policy")

        step("a directory import names each bad line and imports nothing")
        d.get(URL + "/domains")
        d.find_element(By.XPATH, "//tr[@id='d-example.test']//a[text()='Directory']").click()
        area = wait(d, EC.presence_of_element_located((By.NAME, "csv")))
        area.send_keys("Email,Name\nbob@example.test,Bob\nnot-an-address,X\n")
        d.find_element(By.XPATH, "//form[@class='stack']//button").click()
        table = wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "table.line-errors")))
        assert "3" in table.text, table.get_attribute("outerHTML")
        assert "No directory" in d.page_source
        shot(d, "19-directory")
        area = d.find_element(By.NAME, "csv")
        area.clear()
        area.send_keys("Email,Name\nbob@example.test,Bob\n")
        d.find_element(By.XPATH, "//form[@class='stack']//button").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "1 address imported"))

        step("the queue: a message for a route that is down waits; hold, release, delete")
        api("POST", "/api/v1/domains", {"name": "down.test", "route": "127.0.0.1:9"})
        send("alice@sender.test", "x@down.test", "Waiting for down.test")
        d.get(URL + "/queue")
        end = time.time() + 10
        while "x@down.test" not in d.find_element(By.CSS_SELECTOR, "table.rows").text:
            assert time.time() < end, d.page_source
            time.sleep(0.3)
            d.refresh()
        row = d.find_element(By.XPATH, "//tr[td[4][contains(., 'x@down.test')]]")
        row.find_element(By.XPATH, ".//button[text()='Hold']").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "held"))
        row = d.find_element(By.XPATH, "//tr[td[4][contains(., 'x@down.test')]]")
        assert "held" in row.text, row.text
        shot(d, "20-queue")
        row.find_element(By.XPATH, ".//button[text()='Release']").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "released"))
        row = d.find_element(By.XPATH, "//tr[td[4][contains(., 'x@down.test')]]")
        row.find_element(By.XPATH, ".//button[text()='Delete']").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "deleted"))
        assert "x@down.test" not in d.find_element(By.CSS_SELECTOR, "table.rows").text

        step("a sub-account limited to another domain sees none of this one's mail")
        d.get(URL + "/accounts")
        d.find_element(By.NAME, "name").send_keys("helpdesk")
        d.find_element(By.NAME, "password").send_keys("helpdesk password 1")
        Select(d.find_element(By.NAME, "role")).select_by_visible_text("quarantine")
        d.find_element(By.NAME, "domains").send_keys("other.test")
        d.find_element(By.XPATH, "//form[@action='/accounts']//button").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "helpdesk created"))
        shot(d, "09-accounts")
        d.get(URL + "/audit")
        log = d.find_element(By.CSS_SELECTOR, "table.rows").text
        for want in ("account create", "domain add", "quarantine release", "login"):
            assert want in log, (want, log)
        shot(d, "10-audit")
        d.get(URL + "/")
        shot(d, "02-dashboard")
        d.delete_all_cookies()
        sign_in(d, "helpdesk", "helpdesk password 1")
        wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "header.top")))
        d.get(URL + "/tracking?since=1h")
        text = d.find_element(By.ID, "results").text
        assert "alice@sender.test" not in text and "Nothing found" in text, text
        d.get(URL + "/held")
        assert "hold@sender.test" not in d.page_source
        d.get(URL + "/accounts")
        assert "Only an administrator" in d.page_source
        d.get(URL + "/queue")
        assert "Only an administrator" in d.page_source
        d.get(URL + "/policy")
        assert "spammer.test" not in d.page_source, "a global entry shown to a limited account"
        assert not d.find_elements(By.NAME, "spam_threshold")
        print("browser journeys passed", flush=True)
    finally:
        d.quit()


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, TimeoutException, NoSuchElementException) as e:
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
