#!/usr/bin/env bash
# Man pages, --help and docs/configuration.md agree (issue 12 item 7):
#  - every command in `kvp11 --help` has a section in kvp11(1) and back;
#  - every option of a command's --help is in its kvp11(1) section and back
#    (the smime commands share one section and one help);
#  - every key the parser knows (it lists them for an unknown key) is in
#    kvp11.conf(5) and docs/configuration.md under its section, and back;
#  - the bash completion loads and offers commands.
. "$(dirname "$0")/lib.sh"
command -v python3 >/dev/null || skip "python3 not found"
M1=$SRC/man/kvp11.1 M5=$SRC/man/kvp11.conf.5 DOC=$SRC/docs/configuration.md

# help texts: global, then each command
K=$KVP11_TOOL
"$K" --help >"$T/help.global"
sed -n 's/^  kvp11 \[-c FILE\] \([a-z]*\)\( [a-z]*\)\{0,1\}.*/\1\2/p' "$T/help.global" |
  sed 's/ \.\.\.$//; s/ *$//' | sort -u >"$T/commands"
while read -r group sub; do
  # "cert add" style: the word after the group is a sub-command when its help exists
  if [ -n "$sub" ] && "$K" "$group" "$sub" --help >"$T/h" 2>/dev/null; then
    cp "$T/h" "$T/help.$group.$sub"
  else
    "$K" "$group" --help >"$T/help.$group" 2>/dev/null || fail "$group --help"
  fi
done <"$T/commands"

# the parser's keys, per section: it names them for an unknown key
for sec in global "hsm h" "vault v" "account a" "integration-account i"; do
  printf '[%s]\nzz_unknown = 1\n' "$sec" >"$T/probe.conf"
  "$K" -c "$T/probe.conf" cert list >/dev/null 2>"$T/keys.${sec%% *}" && fail "an unknown key was accepted"
done

python3 - "$T" "$M1" "$M5" "$DOC" <<'PY' || fail "man pages, --help and docs disagree (see above)"
import glob, os, re, sys
t, m1, m5, doc = sys.argv[1:]
bad = []
def opts(text):
    return set(re.findall(r"--[a-z][a-z0-9-]*", text))
# kvp11(1): sections .SS "kvp11 X [Y]"
man = open(m1).read().replace("\\-", "-")
secs = {}
for m in re.finditer(r'^\.SS "kvp11 ([a-z ]+)"\n(.*?)(?=^\.S[SH] )', man, re.S | re.M):
    secs[m.group(1)] = m.group(2)
glob_help = open(os.path.join(t, "help.global")).read()
top = glob_help.split("commands:")[0]
man_opts = man.split(".SH OPTIONS")[1].split(".SH COMMANDS")[0]
if opts(top) != opts(man_opts):
    bad.append("global options: help %s, man %s" % (sorted(opts(top)), sorted(opts(man_opts))))
helps = {}
for f in glob.glob(os.path.join(t, "help.*")):
    name = os.path.basename(f)[5:].replace(".", " ")
    if name != "global":
        helps[name] = open(f).read()
for name, text in sorted(helps.items()):
    sec = name if name in secs else name.split()[0]
    if sec not in secs:
        bad.append("kvp11(1) has no section for 'kvp11 %s'" % name)
        continue
    h, m = opts(text) - {"--help"}, opts(secs[sec]) - {"--help"}
    if name.split()[0] == "smime":
        pass  # one help for all smime commands: compare below as a group
    elif h != m:
        bad.append("kvp11 %s: only in --help %s, only in kvp11(1) %s" % (name, sorted(h - m), sorted(m - h)))
smime = set().union(*[opts(v) for k, v in helps.items() if k.startswith("smime")] or [set()])
if "smime" in secs and smime - {"--help"} != opts(secs["smime"]) - {"--help"}:
    bad.append("kvp11 smime: help %s, man %s" % (sorted(smime), sorted(opts(secs["smime"]))))
for s in secs:
    if not any(k == s or k.split()[0] == s for k in helps):
        bad.append("kvp11(1) documents 'kvp11 %s', which --help does not list" % s)
# kvp11.conf(5) and docs/configuration.md against the parser
parser = {}
for sec in ("global", "hsm", "vault", "account", "integration-account"):
    p = open(os.path.join(t, "keys." + sec)).read()
    m = re.search(r"unknown key \(known: ([^)]*)\)", p)
    if not m:
        bad.append("no key list from the parser for [%s]: %s" % (sec, p.strip()))
        continue
    parser[sec] = set(m.group(1).split(", "))
m5t = open(m5).read()
doct = open(doc).read()
for sec, keys in parser.items():
    part = re.search(r'^\.SH "\[%s[^"]*\]"\n(.*?)(?=^\.SH )' % sec, m5t, re.S | re.M)
    mk = set(re.findall(r"^\.B ([a-z_]+)$", part.group(1), re.M)) if part else set()
    dpart = re.search(r"^## `\[%s[^`]*\]`\n(.*?)(?=^## )" % sec, doct, re.S | re.M)
    dk = set(re.findall(r"^\| `([a-z_]+)` \|", dpart.group(1), re.M)) if dpart else set()
    if keys != mk:
        bad.append("[%s] parser vs kvp11.conf(5): only parser %s, only man %s" % (sec, sorted(keys - mk), sorted(mk - keys)))
    if keys != dk:
        bad.append("[%s] parser vs docs/configuration.md: only parser %s, only docs %s" % (sec, sorted(keys - dk), sorted(dk - keys)))
for b in bad:
    print("MISMATCH:", b)
sys.exit(1 if bad else 0)
PY
ok "kvp11(1), kvp11.conf(5), --help and docs/configuration.md agree"

# bash completion: loads, completes commands, sub-commands and options
bash -c '
  export PATH='"$(dirname "$KVP11_TOOL")"':$PATH
  . "$1"
  COMP_WORDS=(kvp11 ce); COMP_CWORD=1; _kvp11; printf "%s\n" "${COMPREPLY[@]}"
  COMP_WORDS=(kvp11 cert a); COMP_CWORD=2; _kvp11; printf "%s\n" "${COMPREPLY[@]}"
  COMP_WORDS=(kvp11 audit --s); COMP_CWORD=2; _kvp11; printf "%s\n" "${COMPREPLY[@]}"
' _ "$SRC/completion/kvp11.bash" >"$T/compl" 2>&1 || { cat "$T/compl"; fail "completion script"; }
grep -qx cert "$T/compl" && grep -qx add "$T/compl" && grep -qx -- --since "$T/compl" ||
  { cat "$T/compl"; fail "completion offers no commands/options"; }
ok "bash completion: commands, sub-commands, options"
echo PASS
