"""The analysis engine without sockets: how the off-hours rule learns a user's working hours
whatever way a session's activity is cut into folds (the monitor folds every ``interval``, so a
login and its first statement often land in different windows)."""

from __future__ import annotations

from tenantgate.config.monitoring import DetectorSettings, MonitoringSettings
from tenantgate.proxy.monitor.engine import DAY, Engine
from tenantgate.proxy.monitor.tally import Facts, Window

ALICE = ("acme", "alice")
NOON = 10 * DAY + 12 * 3600.0  # noon UTC on day 10


def profiled(minimum: float = 1.0) -> Engine:
    """alice, watched for ten days, who only ever worked 02:00-04:00 UTC."""
    settings = MonitoringSettings(warmup=0.0, detectors={
        "off_hours": DetectorSettings("off_hours", minimum=minimum)})
    eng = Engine(settings)
    eng.step(0.0, Window({ALICE: Facts(statements=1)}))
    model = eng.users[ALICE]
    model.days_by_hour = [10 if 2 <= h <= 4 else 0 for h in range(24)]
    model.last_day = [9 if 2 <= h <= 4 else -1 for h in range(24)]
    return eng


def off_hours(eng: Engine, at: float, facts: Facts) -> list[str | None]:
    return [f.user for f in eng.step(at, Window({ALICE: facts})) if f.detector == "off_hours"]


def test_a_login_alone_in_one_fold_does_not_learn_the_hour_its_statement_alerts_in() -> None:
    eng = profiled()
    assert off_hours(eng, NOON, Facts(addresses={"10.0.0.1": 1})) == []  # logged in, nothing run yet
    assert off_hours(eng, NOON + 0.2, Facts(statements=1)) == ["alice"]
    assert eng.users[ALICE].days_by_hour[12] == 1


def test_statements_below_the_minimum_in_each_fold_add_up_within_the_hour() -> None:
    eng = profiled(minimum=3.0)
    assert off_hours(eng, NOON, Facts(statements=1)) == []
    assert off_hours(eng, NOON + 10, Facts(statements=1)) == []
    assert eng.users[ALICE].days_by_hour[12] == 0  # not yet worked: below the minimum
    assert off_hours(eng, NOON + 20, Facts(statements=1)) == ["alice"]
    assert eng.users[ALICE].days_by_hour[12] == 1


def test_the_count_starts_again_in_the_next_hour() -> None:
    eng = profiled(minimum=2.0)
    assert off_hours(eng, NOON + 3590, Facts(statements=1)) == []
    assert off_hours(eng, NOON + 3610, Facts(statements=1)) == []  # 13:00: one statement of this hour
    assert eng.users[ALICE].days_by_hour[12:14] == [0, 0]


def test_a_learned_hour_and_its_neighbours_stay_quiet_on_later_days() -> None:
    eng = profiled()
    assert off_hours(eng, NOON, Facts(statements=5)) == ["alice"]
    eng.last_alert.clear()  # not the re-alert rule keeping it quiet
    assert off_hours(eng, NOON + 1800, Facts(statements=5)) == []  # same hour, same day
    assert off_hours(eng, NOON + DAY + 3600, Facts(statements=5)) == []  # 13:00 next day: next to 12:00
    assert eng.users[ALICE].days_by_hour[12:14] == [1, 1]
