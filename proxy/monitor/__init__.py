"""Security monitoring (issue 17): per-tenant, per-user behaviour baselines, anomaly alerts, responses.

The room has two sides. Pure modules, which import nothing of the serving process (bench/
drives them with an accelerated clock): ``tally`` (the counts a session adds to, folded into
one window per interval), ``baseline`` (robust online statistics), ``detectors`` (one small
rule per attack) and ``engine`` (windows -> findings, with state that survives restarts).
The data-plane side, ``runtime``, runs the fold off the hot path, writes the signed ``alert``
audit records, exports ``tenantgate_alerts_total``, posts the webhook and applies responses.
"""
