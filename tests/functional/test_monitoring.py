"""deploy/monitoring: the alert rules and the Grafana dashboard, checked with the real tools.

- The rules file passes ``promtool check rules`` and its unit tests (``rules.test.yaml``) pass
  ``promtool test rules``: every alert fires when it should and stays quiet when it should not.
  Each alert is then broken on purpose, never firing or always firing, and its unit tests must
  fail: they can.
- The PrometheusRule manifest carries exactly the rules file's groups.
- Every metric name a rule or a panel uses is one that ``sts/metrics.py`` defines (or a rule
  records).
- A real ``sts serve`` (broker mode, two workers, the AWS, GCP and Entra emulators, a Redis that
  does not answer) is driven through successes, a cached repeat, refusals of its own and of the
  clouds, and a 503; a real Prometheus scrapes it and loads the rules. Then every panel query
  (Grafana's variables filled in as Grafana would) returns data, every alert expression
  evaluates without error, every metric name they use exists in that Prometheus, every rule is
  healthy, the alerts the faults call for become active and those of a healthy service do not.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.metrics import MetricWrapperBase

import sts.metrics
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.entra_emulator import EntraEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import GRANT, ID_TOKEN, seed
from tests.functional.serving import free_port, serve_env, stop, wait_ready_within

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules.yaml"
RULE_TESTS = MONITORING / "rules.test.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

#: Seconds a real server or Prometheus may take to start, or Prometheus to see what was done,
#: before a test calls it stuck (a loaded 2-core machine); each wait ends as soon as it is done.
DEADLINE = 120.0


def tool(name: str) -> str:
    """The path of a Prometheus tool (Debian's ``prometheus`` package; .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package")
    return path


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=DEADLINE, check=False
    )


def rules_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return document


def rules() -> list[dict[str, Any]]:
    return [rule for group in rules_document()["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    model: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return model


def panel_targets() -> list[tuple[str, str]]:
    """(panel title, query) of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable name, series selector, label) of the dashboard's query variables, each a
    Grafana ``label_values(selector, label)``."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            parts = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert parts is not None, query
            found.append((variable["name"], parts[1], parts[2]))
    return found


# -- PromQL, read just enough -----------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names, label
    values and durations left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def grafana(expr: str, job: str, rate_interval: str) -> str:
    """A panel's query as Grafana sends it: one job chosen, every pod ("All" is ``.*``)."""
    text = expr.replace("$__rate_interval", rate_interval)
    text = text.replace("$job", job).replace("$instance", ".*")
    assert "$" not in text, f"a dashboard variable the test does not know: {expr}"
    return text


def defined_metric_names() -> set[str]:
    """Every sample name ``sts/metrics.py`` can expose."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    names = set()
    for metric in vars(sts.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def test_metric_names_reads_promql() -> None:
    assert metric_names(
        'sum by (le, cache) (rate(sts_a_bucket{x="y", z=~"$job"}[5m])) / on() group_left '
        "b:c:rate30m offset 1d > bool 0.5 and time() - sts_b > 1e3 or vector(0)"
    ) == {"sts_a_bucket", "b:c:rate30m", "sts_b"}
    assert metric_names('sts_exchanges_total{job=~"$job"}') == {"sts_exchanges_total"}


def test_every_metric_used_by_rules_and_dashboard_is_defined() -> None:
    known = defined_metric_names() | recorded_names()
    used = {
        f"rule {rule.get('alert') or rule.get('record')}": metric_names(rule["expr"])
        for rule in rules()
    }
    used |= {f"panel {title}: {expr}": metric_names(expr) for title, expr in panel_targets()}
    used |= {f"variable {name}": metric_names(selector) for name, selector, _ in variable_queries()}
    for where, names in used.items():
        assert names, f"{where} selects no metric"
        assert names <= known, f"{where} uses {sorted(names - known)}, not in sts/metrics.py"
    # Each metric an alert in the brief rests on is used by an alert.
    alerted = set().union(*(metric_names(rule["expr"]) for rule in alerts()))
    assert {
        "sts_signing_key_loaded",
        "sts_ready",
        "sts_jwks_last_success_timestamp_seconds",
        "sts_audit_write_failures_total",
        "sts_upstream_calls_total",
        "sts_exchanges_total",
    } <= alerted


# -- the rules ----------------------------------------------------------------------------------


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = tool("promtool")
    checked = run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", RULE_TESTS.name, cwd=MONITORING)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_documented_and_tested_firing_and_quiet() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            cases.setdefault(check["alertname"], []).append(check.get("exp_alerts") or [])
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), name
        assert any(expected for expected in cases.get(name, [])), f"{name} never tested firing"
        assert any(not expected for expected in cases.get(name, [])), f"{name} never tested quiet"


def broken(rule: dict[str, Any], how: str) -> str:
    """An expression that never fires, or that also fires (with no labels) whatever the
    series."""
    if how == "never":
        return "vector(1) == 2"
    return f"({rule['expr']}) or vector(1)"


@pytest.mark.parametrize("how", ["never", "always"])
@pytest.mark.parametrize("name", [rule["alert"] for rule in alerts()])
def test_a_broken_alert_fails_its_unit_tests(tmp_path: Path, name: str, how: str) -> None:
    promtool = tool("promtool")
    document = rules_document()
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                rule["expr"] = broken(rule, how)
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
    # Only the test cases of this alert: the others do not say whether it is caught.
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["tests"] = [
        case
        for case in tests["tests"]
        if any(check["alertname"] == name for check in case.get("alert_rule_test", []))
    ]
    (tmp_path / RULE_TESTS.name).write_text(yaml.safe_dump(tests, sort_keys=False))
    assert run(promtool, "check", "rules", RULES.name, cwd=tmp_path).returncode == 0
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, f"{name} broken ({how}) and its tests still pass"
    assert f"alertname: {name}" in result.stdout + result.stderr


def test_a_malformed_expression_fails_the_check(tmp_path: Path) -> None:
    promtool = tool("promtool")
    text = RULES.read_text().replace("sts_signing_key_loaded == 0", "sts_signing_key_loaded ==", 1)
    assert text != RULES.read_text()
    (tmp_path / RULES.name).write_text(text)
    result = run(promtool, "check", "rules", RULES.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "StsSigningKeyMissing" in result.stdout + result.stderr


def test_prometheusrule_carries_the_same_groups() -> None:
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "zuplo-sts"
    assert manifest["spec"] == rules_document()


# -- the dashboard ------------------------------------------------------------------------------


def test_dashboard_model() -> None:
    model = dashboard()
    assert model["uid"] == "zuplo-sts"
    assert model["title"]
    variables = {variable["name"]: variable for variable in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] is True
    assert variables["instance"]["allValue"] == ".*"
    ids = [panel["id"] for panel in model["panels"]]
    assert len(ids) == len(set(ids))
    titles = set()
    for panel in model["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'job=~"$job"' in target["expr"], target["expr"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    # The views the issue asks for.
    for wanted in (
        "Exchanges by outcome",
        "Exchange latency by cache",
        "Credential cache hit ratio",
        "Upstream calls by provider and result",
        "Upstream latency by provider",
        "Refusals by error and provider",
        "JWKS fetches by result",
        "Signing key loaded",
        "Audit writes lost",
        "Mapping revision",
    ):
        assert wanted in titles


# -- against a real Prometheus scraping a real sts serve ----------------------------------------

JOB = "zuplo-sts"
#: Seconds between scrapes, and the rate window the panels get for ``$__rate_interval``: wide
#: enough for several scrapes on a loaded machine.
SCRAPE_SECONDS = 1
RATE_INTERVAL = "20s"

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"
ROLE = "arn:aws:iam::123456789012:role/monitoring-orders"
ROLE_REFUSED = "arn:aws:iam::123456789012:role/monitoring-refused"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/monitoring/providers/monitoring"
)
MAPPINGS = f"""
mappings:
  - name: orders-monitoring
    account: monitoring
    project: orders
    aws:
      role_arn: {ROLE}
  - name: refused-monitoring
    account: monitoring
    project: refused
    aws:
      role_arn: {ROLE_REFUSED}
  - name: analytics-monitoring
    account: monitoring
    project: analytics
    gcp:
      workload_identity_provider: {WIP}
  - name: billing-monitoring
    account: monitoring
    project: billing
    azure:
      tenant_id: {TENANT}
      client_id: {CLIENT}
"""

#: Alerts that a healthy service with these faults (a Redis that does not answer, a cloud's
#: refusals and a 503) must not raise, not even as pending.
QUIET = {
    "StsSigningKeyMissing",
    "StsNotReady",
    "StsJwksStale",
    "StsJwksFetchFailing",
    "StsAuditWritesLost",
    "StsMappingRevisionSkew",
    "StsCredentialCacheHitRatioFalling",
}


def trust(provider_arn: str, host_path: str, subject: str) -> dict[str, Any]:
    """A role trust policy for the broker issuer that pins one mapping's ``sub``."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": ["sts:AssumeRoleWithWebIdentity", "sts:TagSession"],
                "Condition": {
                    "StringEquals": {
                        f"{host_path}:aud": "sts.amazonaws.com",
                        f"{host_path}:sub": subject,
                    }
                },
            }
        ],
    }


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@contextmanager
def sts_serve_on(env: dict[str, str], port: int, log_path: Path) -> Iterator[str]:
    """``sts serve`` with two workers on ``port`` (a broker issuer names its URL before it
    starts), ready; stopped on the way out."""
    command = [sys.executable, "-m", "sts", "serve", "--port", str(port), "--workers", "2"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready_within(proc, url, log_path.read_text)
            yield url
        finally:
            stop(proc)


@dataclass
class Prometheus:
    url: str
    started: float
    describe: Callable[[], str]

    def api(self, path: str, **params: Any) -> Any:
        response = requests.get(self.url + "/api/v1/" + path, params=params, timeout=30)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str) -> list[dict[str, Any]]:
        """``expr`` over Prometheus's whole life, a point a second, ending now: the last point
        is at the time of the call, after every sample the caller saw."""
        end = time.time()
        start = end - math.ceil(end - self.started)
        data = self.api("query_range", query=expr, start=start, end=end, step=1)
        result: list[dict[str, Any]] = data["result"]
        return result

    def until(self, what: str, check: Callable[[], bool]) -> None:
        """Poll ``check`` until it holds (at most :data:`DEADLINE` seconds)."""
        deadline = time.monotonic() + DEADLINE
        while not check():
            assert time.monotonic() < deadline, f"Prometheus never saw {what}\n{self.state()}"
            time.sleep(0.5)

    def state(self) -> str:
        """Its log and what it says of its scrape target, for a failure message."""
        targets = requests.get(self.url + "/api/v1/targets", timeout=30).text
        return f"{self.describe()}\n{targets}"

    def total(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


@contextmanager
def prometheus_scraping(target: str, tmp_path: Path) -> Iterator[Prometheus]:
    """A real Prometheus on a free loopback port, scraping ``target`` (host:port) as job
    :data:`JOB` every :data:`SCRAPE_SECONDS` and evaluating deploy/monitoring/rules.yaml."""
    binary = tool("prometheus")
    port = free_port()
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_SECONDS}s",
            "scrape_timeout": f"{SCRAPE_SECONDS}s",
            "evaluation_interval": f"{SCRAPE_SECONDS}s",
        },
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready_within(proc, url, log_path.read_text, path="/-/ready", timeout=DEADLINE)
            yield Prometheus(url, time.time(), log_path.read_text)
        finally:
            stop(proc)


@dataclass
class Traffic:
    url: str
    issuer: DevIssuer
    gcp: GcpEmulator
    entra: EntraEmulator
    sent: int = 0

    def post(self, project: str, deployment: str) -> requests.Response:
        token = self.issuer.mint(
            audience=AUDIENCE, account="monitoring", project=project, deployment=deployment
        )
        return self.send(token)

    def send(self, token: str) -> requests.Response:
        data = {"grant_type": GRANT, "subject_token_type": ID_TOKEN, "subject_token": token}
        self.sent += 1
        return requests.post(self.url + "/token", data=data, timeout=60)

    def round(self, number: int) -> None:
        """One of each kind of answer."""
        deployment = f"round-{number}"
        token = self.issuer.mint(
            audience=AUDIENCE, account="monitoring", project="orders", deployment=deployment
        )
        # A miss, then hits (a worker that did not answer the miss has a miss of its own: the
        # Redis tier is down).
        answers = [self.send(token) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4, answers[0].text
        garbage = self.send("garbage")
        assert garbage.json()["error"] == "invalid_request"
        refused = self.post("refused", deployment)  # the role trusts another mapping
        assert refused.status_code == 400, refused.text
        assert refused.json()["error_description"].startswith("aws: AccessDenied")
        self.gcp.fail_next(400, {"error": "invalid_grant"}, path="/v1/token")
        gcp = self.post("analytics", deployment)
        assert gcp.status_code == 400, gcp.text
        assert gcp.json()["error_description"].startswith("gcp: invalid_grant")
        azure = self.post("billing", deployment)
        assert azure.status_code == 200, azure.text
        self.entra.fail_next(503)
        down = self.post("billing", deployment + "-down")
        assert down.status_code == 503, down.text


def has_data(result: list[dict[str, Any]]) -> bool:
    """A range query's result that a panel would draw: some series with a number in it."""
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


def test_dashboard_and_alerts_against_a_real_prometheus_scraping_sts_serve(
    tmp_path: Path, issuer: DevIssuer
) -> None:
    port = free_port()
    broker_issuer = f"http://127.0.0.1:{port}"
    with (
        AwsEmulator() as aws,
        GcpEmulator() as gcp,
        EntraEmulator() as entra,
    ):
        provider = aws.iam.add_oidc_provider(broker_issuer, ["sts.amazonaws.com"])
        aws.iam.set_trust_policy(
            ROLE, trust(provider.arn, provider.url, "mapping:orders-monitoring")
        )
        aws.iam.set_trust_policy(ROLE_REFUSED, trust(provider.arn, provider.url, "mapping:other"))
        entra.add_tenant(TENANT)
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(
            TENANT, CLIENT, issuer=broker_issuer, subject="mapping:billing-monitoring"
        )
        database_url = f"sqlite:///{tmp_path / 'sts.db'}"
        seed(database_url, MAPPINGS).dispose()
        env = serve_env(
            database_url,
            issuer,
            aws,
            gcp,
            STS_AZURE_AUTHORITY_URL=entra.authority_url,
            STS_BROKER_ISSUER=broker_issuer,
            STS_KEY_ENCRYPTION_KEY=b64url(secrets.token_bytes(32)),
            # Nothing listens there: every Redis operation falls back (StsRedisFallbacks).
            STS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            STS_CACHE_ENCRYPTION_KEY=b64url(secrets.token_bytes(32)),
        )
        with (
            sts_serve_on(env, port, tmp_path / "serve.log") as url,
            prometheus_scraping(f"127.0.0.1:{port}", tmp_path) as prometheus,
        ):
            check_against(prometheus, Traffic(url, issuer, gcp, entra))


def check_against(prometheus: Prometheus, traffic: Traffic) -> None:
    exchanges = f'sum(sts_exchanges_total{{job="{JOB}"}})'
    prometheus.until("the target up", lambda: prometheus.total(f'up{{job="{JOB}"}}') == 1)
    # Two rounds, the second after Prometheus saw the first: every series a round makes then
    # exists before it grows, so every rate and quantile has something to show.
    for number in (1, 2):
        traffic.round(number)
        sent = traffic.sent
        prometheus.until(f"round {number}", lambda sent=sent: prometheus.total(exchanges) >= sent)
    prometheus.until(
        "every rule evaluated",
        lambda: all(
            rule["health"] != "unknown"
            for group in prometheus.api("rules")["groups"]
            for rule in group["rules"]
        ),
    )
    prometheus.until(
        "every recording rule's series",
        lambda: recorded_names() <= set(prometheus.api("label/__name__/values")),
    )

    problems: list[str] = []
    present = set(prometheus.api("label/__name__/values"))
    job = JOB  # no regex metacharacter in it: Grafana would send it as it is

    for title, expr in panel_targets():
        query = grafana(expr, job, RATE_INTERVAL)
        missing = metric_names(query) - present
        if missing:
            problems.append(f"panel {title}: no metric {sorted(missing)} in Prometheus")
        if not has_data(prometheus.query_range(query)):
            problems.append(f"panel {title}: no data for {query}")

    for name, selector, label in variable_queries():
        match = grafana(selector, job, RATE_INTERVAL)
        if not prometheus.api(f"label/{label}/values", **{"match[]": match}):
            problems.append(f"variable {name}: no {label} values for {match}")

    for rule in rules():
        name = rule.get("alert") or rule["record"]
        missing = metric_names(rule["expr"]) - present
        if missing:
            problems.append(f"rule {name}: no metric {sorted(missing)} in Prometheus")
        prometheus.query(rule["expr"])  # evaluates without error, or raises

    loaded = {
        rule["name"]: rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]
    }
    assert set(loaded) == {rule.get("alert") or rule["record"] for rule in rules()}
    for name, rule in loaded.items():
        if rule["health"] != "ok":
            problems.append(f"rule {name}: {rule['health']} {rule.get('lastError')}")

    assert not problems, "\n".join(problems)

    def active() -> set[tuple[str, str]]:
        return {
            (alert["labels"]["alertname"], alert["labels"].get("provider", ""))
            for alert in prometheus.api("alerts")["alerts"]
        }

    prometheus.until(
        "the Redis and Azure 503 alerts",
        lambda: {("StsRedisFallbacks", ""), ("StsUpstreamUnavailable", "azure")} <= active(),
    )
    raised = {name for name, _ in active()}
    assert not raised & QUIET, raised
