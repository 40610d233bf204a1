"""The screenshots in docs/humaneval.md, taken by the real browser from a scripted round.

  python benchmarks/humaneval_screenshots.py [--out docs]

Serves a round of three systems (hand-written responses to eight prompts, one holding HTML to show
it stays text), lets three scripted raters rate it through headless Chromium (clicks and keyboard
shortcuts), and saves the rating page (humaneval_rate.png) and the results page
(humaneval_results.png). Prints the tally the results page shows. Needs Debian's chromium and
chromium-driver and selenium (see tests/helpers.py, shared with the browser test).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.helpers import Server, browser_missing, chromium, close, free_port  # noqa: E402

PROMPTS = {
    "Explain in two sentences why the sky is blue.": (
        "Sunlight holds every colour, and the air's molecules scatter short blue wavelengths far more than "
        "long red ones. That scattered blue light reaches our eyes from every direction, so the sky looks blue.",
        "The sky is blue because of the ocean. The ocean is blue and the sky reflects it, which is also why "
        "the sky is blue on most days and the sky is blue.",
        "Air scatters blue light more strongly than red (Rayleigh scattering), so blue light reaches us from "
        "all over the sky."),
    "Write a Python function that reverses a string.": (
        "def reverse(s: str) -> str:\n    return s[::-1]",
        "def reverse(s):\n    for c in s:\n        return c",
        "def reverse(text):\n    \"\"\"The characters of text in reverse order.\"\"\"\n    return text[::-1]"),
    "Give three tips for sleeping well.": (
        "1. Keep the same bedtime every day.\n2. Avoid screens for an hour before bed.\n3. Keep the bedroom "
        "cool and dark.",
        "Sleep is important. Many people sleep. Tips for sleeping are tips that help you sleep well.",
        "Go to bed at a regular time, skip caffeine after noon, and keep your room dark and quiet."),
    "Summarise: the meeting moved from Tuesday to Thursday because the room was booked.": (
        "The meeting is now on Thursday; the room was taken on Tuesday.",
        "The meeting is on Tuesday.",
        "Meeting moved to Thursday (room unavailable Tuesday)."),
    "Translate 'good morning' into French and Spanish.": (
        "French: bonjour. Spanish: buenos días.",
        "French: bonne nuit. Spanish: buenas noches.",
        "bonjour (French), buenos días (Spanish)"),
    "What is 17 * 23?": (
        "17 * 23 = 391.",
        "17 * 23 = 401.",
        "391"),
    "Show how to make text bold in HTML.": (
        "Wrap it in a <b> or <strong> element: <strong>important</strong>. Browsers render it bold.",
        "Use <b>bold</b> like <script>alert('this')</script>.",
        "Use the <strong> element, e.g. <strong>text</strong>; prefer CSS font-weight for pure styling."),
    "Suggest a name for a bakery.": (
        "Rise & Shine Bakery: it hints at dough rising and early mornings.",
        "Bakery.",
        "The Daily Crumb"),
}
SYSTEMS = ("sft-1b", "base-1b", "reference")
QUALITY = {"sft-1b": 0.75, "base-1b": 0.1, "reference": 0.7}  # chance a system's answer is judged good


def write_responses(path):
    with open(path, "w") as f:
        for prompt, answers in PROMPTS.items():
            for system, answer in zip(SYSTEMS, answers):
                f.write(json.dumps({"system": system, "prompt": prompt, "response": answer}) + "\n")
    return {answer: system for answers in PROMPTS.values() for system, answer in zip(SYSTEMS, answers)}


def judge(rng, left, right):
    """A scripted rater: each answer is judged good with its system's chance; equal verdicts tie."""
    good_l, good_r = rng.random() < QUALITY[left], rng.random() < QUALITY[right]
    if good_l == good_r:
        return "tie" if good_l else ("both_bad" if rng.random() < 0.5 else rng.choice(["left", "right"]))
    return "left" if good_l else "right"


def main():
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "docs"))
    args = p.parse_args()
    missing = browser_missing()
    if missing:
        sys.exit(f"error: {missing}")
    work = tempfile.mkdtemp(prefix="humaneval-shots-")
    owner = write_responses(os.path.join(work, "responses.jsonl"))
    db = os.path.join(work, "round.db")
    server = Server(["--responses", os.path.join(work, "responses.jsonl"), "--db", db, "--overlap", "0.5",
                     "--rater", "ana", "--rater", "ben", "--rater", "chen"], free_port(), os.path.join(work, "log"))
    driver = chromium(1100, 760)
    rng = random.Random(0)
    try:
        for n, rater in enumerate(("ana", "ben", "chen")):
            driver.get(server.links[f"rater {rater}"])
            i = 0
            while not driver.find_elements(By.ID, "done"):
                left = owner[driver.find_element(By.ID, "response-left").text]
                right = owner[driver.find_element(By.ID, "response-right").text]
                if rater == "chen" and i == 2:  # the rating page, mid-round, with a comment being written
                    ActionChains(driver).send_keys("c").perform()
                    ActionChains(driver).send_keys("One is concrete and complete; the other says nothing useful.").perform()
                    driver.save_screenshot(os.path.join(args.out, "humaneval_rate.png"))
                    ActionChains(driver).send_keys("\ue00c").perform()  # Escape leaves the comment box
                choice = judge(rng, left, right)
                before = driver.find_element(By.ID, "progress-text").text
                ActionChains(driver).send_keys({"left": "1", "right": "2", "tie": "3", "both_bad": "4"}[choice]).perform()
                WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: d.find_elements(By.ID, "done") or (
                    d.find_elements(By.ID, "progress-text") and d.find_element(By.ID, "progress-text").text != before))
                i += 1
        driver.get(server.links["results (keep private)"])
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1100, height + 160)  # the window's height includes its frame
        driver.save_screenshot(os.path.join(args.out, "humaneval_results.png"))
    finally:
        close(driver)
        server.stop()
    print(subprocess.run([sys.executable, "-m", "jaxlm.humaneval", "tally", db], cwd=REPO, check=True,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO)).stdout)
    for name in ("humaneval_rate.png", "humaneval_results.png"):
        path = os.path.join(args.out, name)
        print(f"wrote {path} ({os.path.getsize(path) // 1024} KiB)")


if __name__ == "__main__":
    main()
