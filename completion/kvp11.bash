# bash completion for kvp11 (installed as
# /usr/share/bash-completion/completions/kvp11).
#
# Commands come from `kvp11 --help`, options from `kvp11 CMD [SUB] --help`
# (so they follow the installed version), certificate names from
# `kvp11 cert list`, hsm/vault/account names from the configuration file
# (-c FILE, else $KVP11_CONF, else /etc/kvp11/kvp11.conf).

_kvp11_conf() {
  local i
  for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
    case ${COMP_WORDS[i]} in
      -c | --config) echo "${COMP_WORDS[i + 1]}"; return ;;
    esac
  done
  echo "${KVP11_CONF:-/etc/kvp11/kvp11.conf}"
}

# _kvp11_sections TYPE: the NAMEs of [TYPE NAME] sections
_kvp11_sections() {
  sed -n "s/^[[:space:]]*\\[$1[[:space:]]\\{1,\\}\\([^]]*\\)\\].*/\\1/p" "$(_kvp11_conf)" 2>/dev/null
}

_kvp11_certs() {
  kvp11 -c "$(_kvp11_conf)" cert list 2>/dev/null | awk 'NR > 1 { print $1 }'
}

_kvp11() {
  local cur prev words cword
  _init_completion -n = 2>/dev/null || {
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
  }
  local i cmd="" sub="" skip=0
  for ((i = 1; i < cword; i++)); do
    if ((skip)); then skip=0; continue; fi
    case ${words[i]} in
      -c | --config) skip=1 ;;
      -*) ;;
      *) if [ -z "$cmd" ]; then cmd=${words[i]}; elif [ -z "$sub" ]; then sub=${words[i]}; fi ;;
    esac
  done

  case $prev in
    -c | --config | --cert | --file | --out | --pfx | --key-file | --pass-file | --pin-file | --content | --module)
      # --cert takes a certificate name in smime commands and a file in cert add
      if [ "$prev" = --cert ] && [ "$cmd" = smime ]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_kvp11_certs)" -- "$cur")
      elif [ "$prev" = --cert ] && [ "$cmd" = audit ]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_kvp11_certs)" -- "$cur")
      else
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
      fi
      return ;;
    --hsm) mapfile -t COMPREPLY < <(compgen -W "$(_kvp11_sections hsm)" -- "$cur"); return ;;
    --vault) mapfile -t COMPREPLY < <(compgen -W "$(_kvp11_sections vault)" -- "$cur"); return ;;
    --account) mapfile -t COMPREPLY < <(compgen -W "$(_kvp11_sections account)" -- "$cur"); return ;;
    --to | --from | --cert-name | --name)
      mapfile -t COMPREPLY < <(compgen -W "$(_kvp11_certs)" -- "$cur"); return ;;
    --type) mapfile -t COMPREPLY < <(compgen -W "public private rsa ec" -- "$cur"); return ;;
    --digest) mapfile -t COMPREPLY < <(compgen -W "sha256 sha384 sha512" -- "$cur"); return ;;
    --inform | --outform) mapfile -t COMPREPLY < <(compgen -W "smime pem der" -- "$cur"); return ;;
  esac

  if [ -z "$cmd" ]; then
    local cmds
    cmds=$(kvp11 --help 2>/dev/null | sed -n 's/^  kvp11 \[-c FILE\] \([a-z]*\).*/\1/p' | sort -u)
    if [[ $cur == -* ]]; then
      mapfile -t COMPREPLY < <(compgen -W "-c --config -v --verbose -V --version -h --help" -- "$cur")
    else
      mapfile -t COMPREPLY < <(compgen -W "$cmds help" -- "$cur")
    fi
    return
  fi
  local subs
  subs=$(kvp11 --help 2>/dev/null | sed -n "s/^  kvp11 \\[-c FILE\\] $cmd \\([a-z]*\\) .*/\\1/p; s/^  kvp11 \\[-c FILE\\] $cmd \\([a-z]*\\)\$/\\1/p" | sort -u)
  if [ -n "$subs" ] && [ -z "$sub" ] && [[ $cur != -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$subs" -- "$cur")
    return
  fi
  if [[ $cur == -* ]]; then
    local opts
    # shellcheck disable=SC2086
    opts=$(kvp11 $cmd $sub --help 2>/dev/null | grep -o -- '--[a-z][a-z0-9-]*' | sort -u)
    mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
    return
  fi
  # operands: certificate names (cert show/remove NAME)
  case "$cmd $sub" in
    "cert show" | "cert remove" | "cert "*) mapfile -t COMPREPLY < <(compgen -W "$(_kvp11_certs)" -- "$cur") ;;
  esac
}
complete -F _kvp11 kvp11
