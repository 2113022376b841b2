"""A fake `nft` for the rules unit tests: one in-memory inet table, JSON in and out, each batch
all or nothing, rule counters that tests can bump."""

import copy
import json
from types import SimpleNamespace


class FakeNft:
    def __init__(self):
        self.tables = {}  # (family, name) -> {"chains": {name: {"base":..., "rules": [...]}}}
        self.handle = 0
        self.calls = []
        self.refuse = None  # text: refuse the next batch with it

    # subprocess.run's signature, as the backend calls it
    def __call__(self, argv, input=None, **kw):
        self.calls.append((list(argv), input))
        if argv[:3] == ["nft", "-j", "-f"]:
            return self._batch(json.loads(input)["nftables"])
        if argv[:4] == ["nft", "-j", "list", "table"]:
            key = (argv[4], argv[5])
            if key not in self.tables:
                return self._err("Error: No such file or directory")
            return self._ok(json.dumps({"nftables": self._listing(key)}))
        if argv[:4] == ["nft", "-j", "list", "tables"]:
            items = [{"table": {"family": f, "name": n}} for f, n in self.tables]
            return self._ok(json.dumps({"nftables": [{"metainfo": {}}] + items}))
        raise AssertionError(f"unexpected call {argv}")

    @staticmethod
    def _ok(out=""):
        return SimpleNamespace(returncode=0, stdout=out, stderr="")

    @staticmethod
    def _err(text):
        return SimpleNamespace(returncode=1, stdout="", stderr=text)

    def _listing(self, key):
        fam, name = key
        out = [{"metainfo": {"version": "fake"}}, {"table": {"family": fam, "name": name}}]
        t = self.tables[key]
        for cname, c in t["chains"].items():
            item = {"family": fam, "table": name, "name": cname}
            if c["base"]:
                typ, hook, prio, policy = c["base"]
                item.update(type=typ, hook=hook, prio=prio, policy=policy)
            out.append({"chain": item})
        for cname, c in t["chains"].items():
            for r in c["rules"]:
                rule = {
                    "family": fam,
                    "table": name,
                    "chain": cname,
                    "handle": r["handle"],
                    "expr": r["expr"],
                }
                if r.get("comment"):
                    rule["comment"] = r["comment"]
                out.append({"rule": rule})
        return out

    def _batch(self, cmds):
        if self.refuse:
            text, self.refuse = self.refuse, None
            return self._err(text)
        tables = copy.deepcopy(self.tables)
        try:
            for cmd in cmds:
                ((verb, obj),) = cmd.items()
                ((kind, spec),) = obj.items()
                self._apply(tables, verb, kind, spec)
        except (KeyError, ValueError) as e:
            return self._err(f"Error: Could not process rule: {e}")
        self.tables = tables
        return self._ok()

    def _apply(self, tables, verb, kind, spec):
        key = (spec["family"], spec.get("table", spec.get("name")))
        if kind == "table":
            if verb == "add":
                tables.setdefault(key, {"chains": {}})
            elif verb == "delete":
                del tables[key]
            return
        t = tables[key]
        if kind == "chain":
            name = spec["name"]
            if verb == "add":
                base = None
                if "hook" in spec:
                    base = (spec["type"], spec["hook"], spec["prio"], spec["policy"])
                t["chains"].setdefault(name, {"base": base, "rules": []})
            elif verb == "flush":
                t["chains"][name]["rules"] = []
            elif verb == "delete":
                if t["chains"][name]["rules"]:
                    raise ValueError("chain not empty")
                del t["chains"][name]
            return
        if kind == "rule" and verb == "add":
            chain = t["chains"][spec["chain"]]
            for stmt in spec["expr"]:
                if "jump" in stmt and stmt["jump"]["target"] not in t["chains"]:
                    raise ValueError("No such file or directory")
            expr = copy.deepcopy(spec["expr"])
            for stmt in expr:
                if "counter" in stmt:
                    stmt["counter"] = {"packets": 0, "bytes": 0}
            self.handle += 1
            chain["rules"].append(
                {"expr": expr, "comment": spec.get("comment"), "handle": self.handle}
            )
            return
        raise AssertionError(f"unexpected {verb} {kind}")

    # test helpers

    def chain_rules(self, chain):
        return self.tables[("inet", "lvs_hooks")]["chains"][chain]["rules"]

    def bump(self, chain, index, packets):
        for stmt in self.chain_rules(chain)[index]["expr"]:
            if "counter" in stmt:
                stmt["counter"]["packets"] += packets
