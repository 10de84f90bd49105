"""The end-user quarantine console in a real browser: headless Chromium (Debian's
chromium and chromium-driver) driven by Selenium. Run by control/tests/browser.rs, which
starts the engine, the control service and a sink that keeps every message in
$MAILBOX, adds example.test with carol@example.test in its directory, and quarantines
spam.

Journeys: register, open the activation link from the mail the engine delivered, choose
a password, see the held message, preview it as text, release it and see it reach the
sink; approve a sender; sign out and in again; release a message from the digest's
signed link. Screenshots of each page go to $SHOTS.
"""

import glob
import json
import os
import re
import smtplib
import sys
import time
import urllib.request

from selenium.common.exceptions import NoSuchElementException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from common import browser, shot, step, wait

URL = os.environ["CONSOLE_URL"]
TOKEN = os.environ["API_TOKEN"]
SMTP = int(os.environ["SMTP_PORT"])
MAILBOX = os.environ["MAILBOX"]
USER = "carol@example.test"
PASSWORD = "carol's quarantine password"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def send_spam(subject, sender="promo@shop.test"):
    body = (f"From: <{sender}>\r\nTo: <{USER}>\r\nSubject: {subject}\r\n\r\n"
            f"Great offer at http://shop.test/deal <img src=http://tracker.test/p.gif>\r\n{GTUBE}\r\n")
    end = time.time() + 10
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", SMTP, timeout=20) as s:
                s.sendmail(sender, [USER], body.encode())
            return
        except smtplib.SMTPRecipientsRefused:
            # The engine has not got the directory yet.
            if time.time() > end:
                raise
            time.sleep(0.2)


def mail(*want, secs=15):
    """The text of the first message at the sink containing every one of `want`."""
    end = time.time() + secs
    while True:
        for p in sorted(glob.glob(os.path.join(MAILBOX, "*.eml"))):
            with open(p, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if all(w in text for w in want):
                return text
        assert time.time() < end, f"no mail with {want} at the sink"
        time.sleep(0.2)


def api(method, path):
    req = urllib.request.Request(URL + path, method=method, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read() or b"null")


def held_rows(d):
    return d.find_elements(By.CSS_SELECTOR, "table.rows tbody tr[id^='q-']")


def main():
    send_spam("Held for Carol <b>bold?</b>")
    d = browser()
    try:
        step("the console sends a visitor to sign in")
        d.get(URL + "/quarantine/")
        wait(d, EC.presence_of_element_located((By.NAME, "password")))
        shot(d, "11-user-login")

        step("register: the page says the same for any address")
        d.find_element(By.LINK_TEXT, "Create an account").click()
        d.find_element(By.NAME, "address").send_keys(USER)
        d.find_element(By.CSS_SELECTOR, "section.login button").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "on its way"))
        shot(d, "12-user-register")

        step("the activation mail came through the engine; its link sets the password")
        m = mail(f"To: <{USER}>", "Activate your quarantine account")
        link = re.search(r"(http://\S+/quarantine/activate\?token=[0-9a-f]+)", m).group(1)
        d.get(link)
        wait(d, EC.presence_of_element_located((By.NAME, "confirm")))
        assert USER in d.page_source
        d.find_element(By.NAME, "password").send_keys(PASSWORD)
        d.find_element(By.NAME, "confirm").send_keys(PASSWORD)
        shot(d, "13-user-activate")
        d.find_element(By.CSS_SELECTOR, "section.login button").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "Your account is active"))

        step("the held message is listed, previewed as text, released to the sink")
        end = time.time() + 10
        while not held_rows(d):
            assert time.time() < end, d.page_source
            time.sleep(0.3)
            d.refresh()
        row = held_rows(d)[0]
        assert "Held for Carol <b>bold?</b>" in row.text, row.text
        assert not row.find_elements(By.TAG_NAME, "b"), row.get_attribute("innerHTML")
        shot(d, "14-user-quarantine")
        row.find_element(By.PARTIAL_LINK_TEXT, "Held for Carol").click()
        pre = wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "pre.preview")))
        assert "http://shop.test/deal" in pre.text, pre.text
        assert not d.find_elements(By.CSS_SELECTOR, "main a[href*='shop'], main img, main script")
        shot(d, "15-user-preview")
        d.find_element(By.XPATH, "//button[text()='Release']").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "released to your inbox"))
        mail("Subject: Held for Carol", "X-Bulwark-Released:")
        assert not held_rows(d), "the released message is still listed"

        step("approve a sender on the settings page")
        d.find_element(By.LINK_TEXT, "Approved senders and settings").click()
        d.find_element(By.NAME, "sender").send_keys("news.example")
        d.find_element(By.XPATH, "//button[text()='Approve']").click()
        wait(d, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".notice"), "news.example approved"))
        shot(d, "16-user-settings")

        step("sign out, and in again with the new password")
        d.find_element(By.XPATH, "//button[text()='Sign out']").click()
        wait(d, EC.presence_of_element_located((By.NAME, "password")))
        d.find_element(By.NAME, "address").send_keys(USER)
        d.find_element(By.NAME, "password").send_keys(PASSWORD)
        d.find_element(By.CSS_SELECTOR, "section.login button").click()
        wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "header.top")))
        assert "Mail held for you" in d.page_source

        step("a digest's signed link releases a message without signing in")
        send_spam("Second offer for Carol", sender="deals@other-shop.test")
        end = time.time() + 10
        while not held_rows(d):
            assert time.time() < end, d.page_source
            time.sleep(0.3)
            d.refresh()
        sent = api("POST", "/api/v1/quarantine/digest")
        assert sent["recipients"] == 1, sent
        digest = mail(f"To: <{USER}>", "Quarantine digest")
        release = re.search(r"(http://\S+/quarantine/release\?\S+)", digest).group(1)
        d.delete_all_cookies()
        d.get(release)
        wait(d, EC.presence_of_element_located((By.XPATH, "//button[text()='Release it to my inbox']")))
        assert "Second offer for Carol" in d.page_source
        shot(d, "17-user-digest-release")
        d.find_element(By.XPATH, "//button[text()='Release it to my inbox']").click()
        wait(d, EC.text_to_be_present_in_element((By.TAG_NAME, "main"), "on its way to your inbox"))
        mail("Subject: Second offer for Carol", "(digest link)")
        print("end-user journeys passed", flush=True)
    finally:
        d.quit()


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, TimeoutException, NoSuchElementException, AttributeError) as e:
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
