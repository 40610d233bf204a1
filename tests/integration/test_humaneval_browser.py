"""End to end in a real headless Chromium: two raters rate ten items each on a live server, the
server restarts halfway without losing a rating, and the results page shows the win rates the
scripted choices imply; a response holding <script> shows as text and runs nothing."""

import json

import pytest

from tests.helpers import Server, browser_missing, chromium, close, free_port, get, run_python

missing = browser_missing()
pytestmark = pytest.mark.skipif(missing is not None, reason=f"no real browser: {missing}")

N_PROMPTS = 15
HOSTILE = ("Beta's answer to question 0. <script>alert(1)</script>"
           "<img src=x onerror=\"document.title='pwned'\"><b>bold?</b>")


def _responses(path):
    texts = {}
    with open(path, "w") as f:
        for k in range(N_PROMPTS):
            prompt = f"Question {k}: explain topic number {k} briefly."
            for system in ("alpha", "beta"):
                text = HOSTILE if (system, k) == ("beta", 0) else f"{system.capitalize()}'s answer to question {k}."
                texts[text] = system
                f.write(json.dumps({"system": system, "prompt": prompt, "response": text}) + "\n")
    return texts


def _wanted(rater, k):
    """The scripted judgement: 'alpha', 'beta', 'tie' or 'both_bad'."""
    if rater == "ana":
        return "tie" if k % 4 == 3 else "alpha"
    return "beta" if k % 3 == 0 else ("both_bad" if k == 7 else "alpha")


def _rate_one(driver, rater, texts, use_keys, comment=None):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    k = int(driver.find_element(By.ID, "prompt").text.split(":")[0].split()[1])
    left = texts[driver.find_element(By.ID, "response-left").text]
    want = _wanted(rater, k)
    choice = {"alpha": "left" if left == "alpha" else "right", "beta": "left" if left == "beta" else "right"}.get(want, want)
    if comment:
        ActionChains(driver).send_keys("c").perform()  # the comment shortcut, then typing goes to the box
        ActionChains(driver).send_keys(comment + "1234").perform()  # digits typed in the box rate nothing
        ActionChains(driver).send_keys(Keys.ESCAPE).perform()  # leave the box: keys rate again
    before = driver.current_url, driver.find_element(By.ID, "progress-text").text
    if use_keys:
        ActionChains(driver).send_keys({"left": "1", "right": "2", "tie": "3", "both_bad": "4"}[choice]).perform()
    else:
        driver.find_element(By.ID, f"choose-{choice}").click()
    return k, want, before


def _wait_moved_on(driver, before):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def moved(d):
        if d.find_elements(By.ID, "done"):
            return True
        texts = d.find_elements(By.ID, "progress-text")
        return bool(texts) and texts[0].text != before[1]

    # an element read while the next page replaces this one goes stale: look again
    WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,)).until(moved)


def test_two_raters_restart_and_results(tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    texts = _responses(tmp_path / "responses.jsonl")
    db = tmp_path / "round.db"
    args = ["--responses", str(tmp_path / "responses.jsonl"), "--db", str(db), "--overlap", str(5 / 15),
            "--per-rater", "10", "--rater", "ben"]
    server = Server(args, free_port(), tmp_path / "server.log")
    driver = chromium()
    done, saw_hostile = [], 0
    try:
        assert "5 shared" in server.output()
        # the database and anything outside the routes are never served
        for path in ("/round.db", "/static/../round.db", f"/static/{db}", "/results/wrong-token", "/r/nope"):
            assert get(server.base + path)[0] == 404, path

        # ana joins through the invite link; ben uses the per-rater link printed at start
        driver.get(server.links["raters join at"])
        driver.find_element(By.ID, "name").send_keys("ana")
        driver.find_element(By.ID, "join").click()
        WebDriverWait(driver, 10).until(lambda d: "/r/" in d.current_url)
        ana_link = driver.current_url
        for rater, link in (("ana", ana_link), ("ben", server.links["rater ben"])):
            driver.get(link)
            for i in range(10):
                if rater == "ana" and i == 5:  # restart the server mid-round: nothing may be lost
                    server.stop()
                    server.start()
                    status, body = get(server.links["results (keep private)"])
                    assert status == 200 and "5 ratings from 1 rater on 5 of 15 items" in " ".join(body.split())
                    driver.get(link)
                    assert driver.find_element(By.ID, "progress-text").text == "5 rated · 5 to go"
                    assert driver.find_element(By.ID, "progress").get_attribute("value") == "5"
                for side in ("response-left", "response-right"):
                    if driver.find_element(By.ID, side).text == HOSTILE:
                        saw_hostile += 1
                        assert driver.title != "pwned"
                        assert not driver.find_elements(By.CSS_SELECTOR, f"#{side} b, #{side} img, #{side} script")
                        with pytest.raises(NoAlertPresentException):
                            driver.switch_to.alert.text
                k, want, before = _rate_one(driver, rater, texts, use_keys=i % 2 == 0,
                                            comment="looks fine" if i == 2 else None)
                _wait_moved_on(driver, before)
                done.append((rater, k, want))
            assert driver.find_element(By.ID, "done").text.startswith("You rated 10 items")
        assert saw_hostile >= 1
    finally:
        close(driver)
        results_url = server.links["results (keep private)"]
        status, page = get(results_url)
        server.stop()

    assert status == 200
    ks = {r: [k for rr, k, _ in done if rr == r] for r in ("ana", "ben")}
    assert len(set(ks["ana"])) == 10 and len(set(ks["ben"])) == 10  # never the same item twice
    assert set(ks["ana"]) | set(ks["ben"]) == set(range(N_PROMPTS))  # every item rated
    assert len(set(ks["ana"]) & set(ks["ben"])) == 5  # the shared share

    # the expected win rates, from the scripted choices alone (a tie or both bad is half a win)
    alpha = sum(w == "alpha" for *_, w in done) + 0.5 * sum(w in ("tie", "both_bad") for *_, w in done)
    assert f'<td class="winrate">{100 * alpha / 20:.1f}%</td>' in page
    assert f'<td class="winrate">{100 * (20 - alpha) / 20:.1f}%</td>' in page
    assert "20 ratings from 2 raters on 15 of 15 items (5 shared" in " ".join(page.split())

    exported = tmp_path / "ratings.json"
    run_python("-m", "jaxlm.humaneval", "export", str(db), "--out", str(exported), check=True)
    rows = json.loads(exported.read_text())
    assert len(rows) == 20 and sum(r["comment"] == "looks fine1234" for r in rows) == 2
    assert any(r["second_response"] == HOSTILE for r in rows)  # stored and exported verbatim
    tally = run_python("-m", "jaxlm.humaneval", "tally", str(db), "--json", check=True)
    report = json.loads(tally.stdout)
    by_name = {s["name"]: s for s in report["systems"]}
    assert by_name["alpha"]["win_rate"] == pytest.approx(alpha / 20, abs=1e-12)
    assert by_name["alpha"]["n"] == 20
    # agreement on the five shared items, counted here by hand from the script
    shared = sorted(set(ks["ana"]) & set(ks["ben"]))
    a = [_wanted("ana", k) for k in shared]
    b = [_wanted("ben", k) for k in shared]
    observed = sum(x == y for x, y in zip(a, b)) / 5
    chance = sum(a.count(c) * b.count(c) for c in set(a)) / 25
    (_, _, n_common, kappa), = report["cohen"]
    assert n_common == 5
    assert kappa == pytest.approx((observed - chance) / (1 - chance), abs=1e-12) if chance < 1 else kappa is None
