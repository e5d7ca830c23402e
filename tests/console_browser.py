#!/usr/bin/python3
"""Drives the mkfleet console in headless Chromium (WebDriver, Debian's chromium-driver).

Run by tests/console_browser_test.cc against a real fleet on loopback. Checks, in order:
  1. the fleet page lists exactly the hosts given;
  2. the host page's SVG has one PU shape per CPU of the host's topology, and the PUs of the
     instance are exactly its placement's CPUs, coloured with its legend colour;
  3. a panic injected into the instance (the command after --panic) shows as a standby
     takeover on the open instance page within --within seconds, without a reload;
  4. the browser logged no error.
Saves screenshots (fleet.png, host.png, instance.png) and the host's SVG in --out.
Exits 0 when every check holds, 1 with the reasons otherwise, 2 when the browser cannot start.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)
        print("FAIL: " + message, flush=True)
    return ok


def api(base, path):
    with urllib.request.urlopen(base + "/api/" + path, timeout=10) as r:
        return json.loads(r.read())


def wait_for(driver, find, timeout=10.0, every=0.05):
    """Polls find(driver) until it returns something truthy; returns it or None."""
    end = time.monotonic() + timeout
    while True:
        try:
            got = find(driver)
            if got:
                return got
        except WebDriverException:
            pass
        if time.monotonic() >= end:
            return None
        time.sleep(every)


def start_browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # No network but loopback here: Chromium's own background connections are turned off.
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--window-size=1400,1000",
                 "--user-data-dir=" + profile]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the console, http://127.0.0.1:PORT")
    parser.add_argument("--hosts", required=True, help="every host's name, comma-separated")
    parser.add_argument("--host", required=True, help="the host whose page is checked")
    parser.add_argument("--pus", type=int, required=True, help="how many CPUs the host's topology has")
    parser.add_argument("--instance", required=True, help="an instance on --host (with a standby)")
    parser.add_argument("--within", type=float, default=2.0, help="seconds the takeover may take to show")
    parser.add_argument("--out", required=True, help="where screenshots go")
    parser.add_argument("--panic", nargs=argparse.REMAINDER, required=True, help="the command that injects the panic")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    with tempfile.TemporaryDirectory() as profile:
        try:
            driver = start_browser(profile)
        except WebDriverException as e:
            print("cannot start headless Chromium (scripts/setup installs chromium and chromium-driver): %s" % e)
            return 2
        try:
            run(driver, args)
        finally:
            driver.quit()
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all browser checks passed")
    return 0


def run(driver, args):
    base = args.url.rstrip("/")
    # 1. The fleet page.
    driver.get(base + "/#/")
    wanted = sorted(args.hosts.split(","))
    rows = wait_for(driver, lambda d: sorted(e.get_attribute("data-host")
                                             for e in d.find_elements(By.CSS_SELECTOR, "#hosts tr.host")) == wanted
                    and d.find_elements(By.CSS_SELECTOR, "#hosts tr.host"))
    shown = sorted(e.get_attribute("data-host") for e in driver.find_elements(By.CSS_SELECTOR, "#hosts tr.host"))
    check(rows, "fleet page: hosts %s, expected %s" % (shown, wanted))
    driver.save_screenshot(os.path.join(args.out, "fleet.png"))

    # 2. The host page and its picture.
    driver.get(base + "/#/hosts/" + args.host)
    svg = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#topology svg.topology"))
    if check(svg, "host page: no topology picture"):
        pus = driver.find_elements(By.CSS_SELECTOR, "#topology svg rect.pu")
        check(len(pus) == args.pus, "host page: %d PU shapes, the topology has %d CPUs" % (len(pus), args.pus))
        placement = api(base, "instances/" + args.instance)["status"]["placement"]
        check(placement.get("host") == args.host, "%s is on %s, not %s" % (args.instance, placement.get("host"),
                                                                           args.host))
        mine = driver.find_elements(By.CSS_SELECTOR, '#topology svg rect.pu[data-owner="%s"]' % args.instance)
        cpus = sorted(int(e.get_attribute("data-cpu")) for e in mine)
        check(cpus == sorted(placement["cpus"]),
              "host page: PUs of %s are %s, its placement has %s" % (args.instance, cpus, sorted(placement["cpus"])))
        legend = driver.find_elements(By.CSS_SELECTOR, '#topology svg g.legend-item[data-owner="%s"] rect'
                                      % args.instance)
        if check(legend, "host page: no legend entry for %s" % args.instance):
            colour = legend[0].get_attribute("fill")
            fills = {e.get_attribute("fill") for e in mine}
            check(fills == {colour}, "host page: PUs of %s filled %s, its legend colour is %s"
                  % (args.instance, fills, colour))
            others = {e.get_attribute("fill") for e in pus if e.get_attribute("data-owner") != args.instance}
            check(colour not in others, "host page: %s's colour %s is also on other PUs" % (args.instance, colour))
        with open(os.path.join(args.out, "host.svg"), "w") as f:
            f.write(svg[0].get_attribute("outerHTML"))
    driver.save_screenshot(os.path.join(args.out, "host.png"))

    # 3. The instance page, then a panic: the takeover shows without a reload.
    driver.get(base + "/#/instances/" + args.instance)
    check(wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#serving-kernel")),
          "instance page: did not load")
    check(wait_for(driver, lambda d: d.find_element(By.ID, "live").text == "live"),
          "instance page: the live updates did not connect")
    takeovers = len(driver.find_elements(By.CSS_SELECTOR, 'tr.event[data-reason="StandbyTakeover"]'))
    driver.execute_script("window.__noReload = 42;")
    result = subprocess.run(args.panic, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    injected = time.monotonic()
    check(result.returncode == 0, "panic: %s exited %d: %s" % (args.panic, result.returncode, result.stdout))
    shown = wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, 'tr.event[data-reason="StandbyTakeover"]'))
                     > takeovers, timeout=10)
    took = time.monotonic() - injected
    print("takeover shown %.2f s after the panic" % took, flush=True)
    check(shown, "instance page: no StandbyTakeover event within 10 s of the panic")
    check(took <= args.within, "instance page: the takeover took %.2f s to show (at most %.1f s)" % (took, args.within))
    check(driver.execute_script("return window.__noReload;") == 42, "instance page: it was reloaded")
    driver.save_screenshot(os.path.join(args.out, "instance.png"))

    # 4. No error in the browser's log.
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    check(not errors, "browser log: %s" % errors)


if __name__ == "__main__":
    sys.exit(main())
