"""A real browser for the portal: headless Chromium (Debian's `chromium`) driven by Selenium
through Debian's `chromium-driver`, so nothing is downloaded at run time. The tests, the
screenshots in docs/portal/ and the demo use it.

Chromium is told to trust exactly the portal's certificate (its key's SPKI hash) rather than
to ignore certificate errors; that needs a profile folder of its own, made for each run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from nvi.core.errors import NviError

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
T = TypeVar("T")


def spki_pin(cert_file: Path) -> str:
    """The base64 SHA-256 of a certificate's public key, as Chromium's SPKI list wants it."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@contextlib.contextmanager
def chromium(
    *,
    javascript: bool = True,
    trust: Sequence[Path] = (),
    size: tuple[int, int] = (1280, 900),
) -> Iterator[WebDriver]:
    """A headless Chromium for one use; `trust` lists certificates (PEM) it accepts for
    HTTPS although no system CA signed them. `javascript=False` turns scripts off."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.exists():
            raise NviError(f"{program} is missing: apt-get install chromium chromium-driver")
    with tempfile.TemporaryDirectory(prefix="nvi-chromium-") as profile:
        options = Options()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--window-size={size[0]},{size[1]}",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(argument)
        if os.geteuid() == 0:
            options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
        if trust:
            pins = ",".join(spki_pin(cert) for cert in trust)
            options.add_argument(f"--ignore-certificate-errors-spki-list={pins}")
        if not javascript:
            options.add_experimental_option(
                "prefs", {"profile.managed_default_content_settings.javascript": 2}
            )
        service = Service(executable_path=str(CHROMEDRIVER), log_output=os.devnull)
        driver = webdriver.Chrome(service=service, options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except WebDriverException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


def sign_in(driver: WebDriver, url: str, token: str) -> None:
    """Sign in through the page, as a person would."""
    driver.get(url.rstrip("/") + "/signin")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
    wait_for("signed in", lambda: driver.find_elements(By.ID, "who"))


def screenshot(
    url: str,
    token: str,
    out: Path,
    *,
    path: str = "/nodes",
    cert_file: Path | None = None,
    size: tuple[int, int] = (1280, 800),
) -> Path:
    """Sign in to the portal at `url` with `token` and save a PNG of page `path` (the demo's
    report uses it). `cert_file`: the portal's certificate, when no system CA signed it."""
    trust = [cert_file] if cert_file else []
    with chromium(trust=trust, size=size) as driver:
        sign_in(driver, url, token)
        driver.get(url.rstrip("/") + path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(out)):
            raise NviError(f"Chromium could not save a screenshot to {out}")
    return out
