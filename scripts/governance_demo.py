#!/usr/bin/env python3
"""Runs docs/governance.md against a running tagbase server with the demo
data, as the demo staff, and prints what each step answered.

    cargo run --release -- serve --demo          # in one terminal
    python3 scripts/governance_demo.py           # in another

Environment: TAGBASE_URL (default http://127.0.0.1:8080/graphql) and
TAGBASE_TOKEN_CMD, the command that prints a token for a login (default
`cargo run -q --release -- token --login`; it must use the server's
database, e.g. with DATABASE_URL set the same way). Python 3 standard
library only. Exits non-zero when a step does not answer as documented.
"""

import json
import os
import shlex
import subprocess
import sys
import threading
import urllib.request
from datetime import datetime, timezone

URL = os.environ.get("TAGBASE_URL", "http://127.0.0.1:8080/graphql")
TOKEN_CMD = shlex.split(os.environ.get("TAGBASE_TOKEN_CMD", "cargo run -q --release -- token --login"))
_tokens = {}


def token(login):
    if login not in _tokens:
        _tokens[login] = subprocess.run(TOKEN_CMD + [login], check=True, capture_output=True, text=True).stdout.strip()
    return _tokens[login]


def gql(login, query, variables=None):
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        URL, data=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {token(login)}"}
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def ok(login, query, variables=None):
    answer = gql(login, query, variables)
    if "errors" in answer:
        fail(f"{login}: unexpected errors {json.dumps(answer['errors'], ensure_ascii=False)}")
    return answer["data"]


def code(answer):
    return answer.get("errors", [{}])[0].get("extensions", {}).get("code")


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def expect(actual, wanted, what):
    if actual != wanted:
        fail(f"{what}: expected {wanted!r}, got {actual!r}")
    print(f"  ok  {what}: {actual}")


def step(title):
    print(f"\n== {title}")


def library(login, unit_code):
    units = ok(login, "{ orgUnits { id code } }")["orgUnits"]
    unit = next(u["id"] for u in units if u["code"] == unit_code)
    data = ok(
        login,
        "query($u: ID!) { tagLibrary(orgUnitId: $u) { groups { id name version exclusive tags { id name version } } } }",
        {"u": unit},
    )
    return unit, data["tagLibrary"]["groups"]


def find_tag(groups, group_name, tag_name):
    group = next(g for g in groups if g["name"] == group_name)
    return next(t for t in group["tags"] if t["name"] == tag_name)


REQUEST = "id status kind scope { code } requester { login } decidedBy { login } decisionComment"


def main():
    started = datetime.now(timezone.utc).isoformat()
    sz01, groups = library("sz01.manager", "sz01")

    step("1. a store proposes, its region approves")
    climate = find_tag(groups, "华南区域标签", "南方气候")
    data = ok(
        "sz01.manager",
        f"""mutation($id: ID!, $v: Int!) {{ updateTag(input: {{ id: $id, expectedVersion: $v, name: "南方湿热气候",
            reason: "门店反馈：名称更准确" }}) {{ applied changeRequest {{ {REQUEST} }} }} }}""",
        {"id": climate["id"], "v": climate["version"]},
    )["updateTag"]
    expect(data["applied"], False, "sz01.manager's edit of the region's tag applied")
    expect(data["changeRequest"]["scope"]["code"], "south", "request scope")
    request = data["changeRequest"]["id"]
    expect(code(gql("sz01.manager", "mutation($id: ID!) { approveChangeRequest(id: $id) { changeRequest { id } } }",
                    {"id": request})), "FORBIDDEN", "self-approval")
    expect(code(gql("north.manager", "query($id: ID!) { changeRequest(id: $id) { id } }", {"id": request})),
           "NOT_FOUND", "the other region sees it")
    data = ok(
        "south.manager",
        f"""mutation($id: ID!) {{ approveChangeRequest(id: $id, comment: "同意") {{
            changeRequest {{ {REQUEST} }} tag {{ name version }} }} }}""",
        {"id": request},
    )["approveChangeRequest"]
    expect(data["changeRequest"]["status"], "APPROVED", "south.manager approves")
    expect(data["tag"]["name"], "南方湿热气候", "the tag now")

    step("2. HQ rejects with a reason")
    _, hq_groups = library("south.manager", "south")
    assets = next(g for g in hq_groups if g["name"] == "资产状况")
    data = ok(
        "south.manager",
        """mutation($id: ID!, $v: Int!) { updateTagGroup(input: { id: $id, expectedVersion: $v, name: "资产与负债",
            reason: "区域想统一叫法" }) { applied changeRequest { id scope { code } } } }""",
        {"id": assets["id"], "v": assets["version"]},
    )["updateTagGroup"]
    expect(data["changeRequest"]["scope"]["code"], "hq", "request scope")
    reject = "mutation($id: ID!, $r: String!) { rejectChangeRequest(id: $id, reason: $r) { changeRequest { status decisionComment } } }"
    expect(code(gql("admin", reject, {"id": data["changeRequest"]["id"], "r": " "})), "VALIDATION", "rejection without a reason")
    data = ok("admin", reject, {"id": data["changeRequest"]["id"], "r": "总部口径不变"})["rejectChangeRequest"]
    expect(data["changeRequest"]["status"], "REJECTED", "admin rejects")

    step("3. two approvers race")
    special = find_tag(groups, "门店专属", "特殊护理需求")
    data = ok(
        "sz01.manager",
        """mutation($id: ID!, $v: Int!) { updateTag(input: { id: $id, expectedVersion: $v, description: "术后护理" }) {
            applied tag { version } } }""",
        {"id": special["id"], "v": special["version"]},
    )["updateTag"]
    expect(data["applied"], True, "the store's own tag, edited directly")
    gold = find_tag(groups, "华南区域标签", "黄金会员")
    data = ok(
        "sz01.manager",
        """mutation($id: ID!, $v: Int!) { updateTag(input: { id: $id, expectedVersion: $v, aliases: ["金卡会员"] }) {
            applied changeRequest { id } } }""",
        {"id": gold["id"], "v": gold["version"]},
    )["updateTag"]
    race = data["changeRequest"]["id"]
    answers = {}

    def approve(login):
        answers[login] = gql(login, "mutation($id: ID!) { approveChangeRequest(id: $id) { changeRequest { status } } }",
                             {"id": race})

    threads = [threading.Thread(target=approve, args=(login,)) for login in ("admin", "south.manager")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = sorted("OK" if "errors" not in a else code(a) for a in answers.values())
    expect(outcomes, ["CONFLICT", "OK"], "admin and south.manager approve at once")

    step("4. merge 升学咨询 into 小升初需求")
    a, b = find_tag(groups, "教育需求", "小升初需求"), find_tag(groups, "教育需求", "升学咨询")
    ever = 'taggedBetween("{}", "2000-01-01", "2100-01-01")'
    count = "query($t: String!) { segmentPreview(segment: { text: $t }) { count } }"
    before = ok("admin", count, {"t": f"{ever.format('小升初需求')} OR {ever.format('升学咨询')}"})["segmentPreview"]["count"]
    data = ok(
        "admin",
        """mutation($a: ID!, $va: Int!, $b: ID!, $vb: Int!) { mergeTags(input: { targetTagId: $a, targetExpectedVersion: $va,
            sourceTagId: $b, sourceExpectedVersion: $vb, reason: "同一需求，两个叫法" }) { applied tag { aliases customerCount } } }""",
        {"a": a["id"], "va": a["version"], "b": b["id"], "vb": b["version"]},
    )["mergeTags"]
    expect(data["applied"], True, "merge applied")
    expect("升学咨询" in data["tag"]["aliases"], True, "升学咨询 is an alias")
    after = ok("admin", count, {"t": ever.format("小升初需求")})["segmentPreview"]["count"]
    expect(after, before, "customers ever tagged 小升初需求 (with 升学咨询's history)")

    step("5. roll back a rename")
    inquiry = find_tag(groups, "活动", "询价")
    ok("admin", """mutation($id: ID!, $v: Int!) { updateTag(input: { id: $id, expectedVersion: $v, name: "问价" }) { applied } }""",
       {"id": inquiry["id"], "v": inquiry["version"]})
    data = ok(
        "admin",
        """mutation($id: ID!, $to: Int!, $v: Int!) { rollbackTag(input: { id: $id, version: $to, expectedVersion: $v }) {
            tag { name version } } }""",
        {"id": inquiry["id"], "to": inquiry["version"], "v": inquiry["version"] + 1},
    )["rollbackTag"]
    expect(data["tag"]["name"], "询价", "name after rollback")
    history = ok("admin", "query($id: ID!) { tagHistory(tagId: $id) { version action changes { field from to } } }",
                 {"id": inquiry["id"]})["tagHistory"]
    expect([h["action"] for h in history[:2]], ["rollback", "update"], "history, newest first")

    step("6. a modification lock refuses instead of overwriting")
    customers = ok("sz01.sales", "{ customers(first: 3) { edges { node { id } } } }")["customers"]["edges"]
    ids = [c["node"]["id"] for c in customers]
    activity = next(g for g in groups if g["name"] == "活动")
    lock = ok(
        "hq.marketing",
        """mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: "试驾季活动批量打标" }) {
            lock { id expiresAt } } }""",
        {"g": activity["id"], "c": ids},
    )["lockTagGroup"]["lock"]
    closed = find_tag(groups, "活动", "已完成交易")
    tag = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }"
    refused = gql("sz01.sales", tag, {"c": ids[:1], "t": [closed["id"]]})
    expect(code(refused), "LOCKED", "sz01.sales tags 已完成交易 under the lock")
    print(f"      {refused['errors'][0]['message']}")
    ok("hq.marketing", tag, {"c": ids, "t": [find_tag(groups, "活动", "试驾预约")["id"]]})
    ok("hq.marketing", "mutation($id: ID!) { unlockTagGroup(lockId: $id) { lock { releasedAt } } }", {"id": lock["id"]})
    ok("sz01.sales", tag, {"c": ids[:1], "t": [closed["id"]]})
    print("  ok  the retry after the release lands")

    step("7. the audit log")
    data = ok(
        "hq.auditor",
        """query($from: DateTime!) { auditLog(filter: { from: $from }, first: 100) { totalCount
            edges { node { action outcome actor { login } orgUnit { code } } } } }""",
        {"from": started},
    )["auditLog"]
    for edge in reversed(data["edges"]):
        node = edge["node"]
        print(f"      {node['outcome']:6} {node['actor']['login'] if node['actor'] else '-':14} {node['action']:28} "
              f"{(node['orgUnit'] or {}).get('code', '-')}")
    actions = [e["node"]["action"] for e in data["edges"]]
    for wanted in ["change_request.create", "change_request.approve", "change_request.reject", "tag.merge",
                   "tag.rollback", "tag_group.lock", "mutation.tagCustomers", "customer.tag"]:
        expect(wanted in actions, True, f"audit shows {wanted}")
    print("\nall steps answered as documented")


if __name__ == "__main__":
    main()
