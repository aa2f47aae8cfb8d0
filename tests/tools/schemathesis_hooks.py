"""Schemathesis hooks for tests/admin_fuzz.rs (loaded through SCHEMATHESIS_HOOKS).

transform and filter are never disabled, enabled or reconfigured during the run, so that the
calls fuzzed meanwhile keep reaching plugin code instead of a 404. Every phase is covered,
the stateful one too (it takes plugin names from `GET /plugins`): such a change is sent to
counter instead, which nothing requires.
"""

import schemathesis

KEPT = {"transform", "filter"}
CHURNED = "counter"
CHANGES = ("/enable", "/disable", "/config")


@schemathesis.hook
def before_call(context, case, kwargs):
    name = (case.path_parameters or {}).get("name")
    if name in KEPT and case.operation.path.endswith(CHANGES):
        case.path_parameters["name"] = CHURNED
