# bash completion for strata(1), installed as share/bash-completion/completions/strata.
# Commands, options and what each option's value is come from the strata being completed:
# `strata --help` and `strata CMD --help`, the texts the man page is built from. A hand-kept
# list here would go stale the day an option is added; the help text cannot without the user
# noticing. Both are read at each TAB (a few milliseconds), so a rebuilt strata is seen at once.

# The commands `strata --help` lists: its lines "  COMMAND ARGS...", in their order.
_strata_commands() {
  "$1" --help 2>/dev/null | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p' | awk '!seen[$0]++'
}

# Reads `strata CMD --help` into _strata_options (every --option the text names, --json among
# them where only the prose mentions it) and _strata_value[OPTION]: what the option takes
# ("SIZE", "human|json"), short aliases under their long name. Option lines are
# "  [-X, ]--NAME[ ARG|=ARG]  description", as cli/strata-man.sh reads them too.
_strata_read_help() {
  local text line name short
  text=$("$1" "$2" --help 2>/dev/null) || return 1
  mapfile -t _strata_options < <(grep -o -- '--[a-z][a-z-]*' <<<"$text" | sort -u)
  _strata_value=() _strata_alias=()
  local re='^ +(-([A-Za-z]), )?(--[a-z][a-z-]*)([ =]([^ ]+))?'
  while IFS= read -r line; do
    [[ $line =~ $re ]] || continue
    name=${BASH_REMATCH[3]} short=${BASH_REMATCH[2]}
    [[ -n ${BASH_REMATCH[5]} ]] && _strata_value[$name]=${BASH_REMATCH[5]}
    [[ -n $short ]] && _strata_alias[-$short]=$name
  done <<<"$text"
  # The usage lines may spell a value's choices where the option line has a placeholder:
  # "-F raw|strata" beside "-F, --backing-format FMT".
  local choice_re='(-[A-Za-z]|--[a-z][a-z-]*)[ =]([a-z]+([|][a-z]+)+)'
  while IFS= read -r line; do
    [[ $line =~ $choice_re ]] || continue
    name=${BASH_REMATCH[1]}
    _strata_value[${_strata_alias[$name]:-$name}]=${BASH_REMATCH[2]}
  done <<<"$(grep -oE -- "$choice_re" <<<"$text")"
}

# What OPTION takes ("" for a flag or an unknown option), aliases resolved.
_strata_value_of() {
  local name=${_strata_alias[$1]:-$1}
  REPLY=${_strata_value[$name]:-}
}

# Adds the files matching any of the patterns ("*.ctl") under $cur, and directories.
_strata_files() {
  local IFS=$'\n' pattern
  compopt -o filenames 2>/dev/null
  COMPREPLY+=($(compgen -d -- "$cur"))
  for pattern in "$@"; do COMPREPLY+=($(compgen -f -X "!$pattern" -- "$cur")); done
}

# Adds the snapshot names of the disk: through the control socket when one was given, else from
# the LAYER file. A cheap grep of the JSON: no jq needed.
_strata_snapshots() {
  local bin=$1 control=$2 layer=$3 json
  if [[ -n $control ]]; then
    json=$("$bin" list --control "$control" --output=json 2>/dev/null)
  elif [[ -n $layer ]]; then
    json=$("$bin" info --output=json "$layer" 2>/dev/null)
  fi
  local IFS=$'\n'
  COMPREPLY+=($(compgen -W "$(sed -n 's/.*"snapshot": *"\([^"]*\)".*/\1/p' <<<"$json")" -- "$cur"))
}

_strata() {
  local bin=${COMP_WORDS[0]/#\~/$HOME} cur=${COMP_WORDS[COMP_CWORD]} option=
  COMPREPLY=()
  # "--output=js": bash splits at "=" (COMP_WORDBREAKS) into "--output" "=" "js".
  local before=$((COMP_CWORD - 1))
  if [[ $cur == = ]]; then
    cur= option=${COMP_WORDS[before]}
  elif ((before > 0)) && [[ ${COMP_WORDS[before]} == = ]]; then
    option=${COMP_WORDS[before - 1]}
  elif [[ $cur == --*=* ]]; then  # COMP_WORDBREAKS without "="
    option=${cur%%=*} cur=${cur#*=}
  fi

  if ((COMP_CWORD == 1)); then
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$(_strata_commands "$bin") --help --version" -- "$cur"))
    return
  fi
  local cmd=${COMP_WORDS[1]}
  [[ $cmd == help ]] && { COMPREPLY=($(compgen -W "$(_strata_commands "$bin")" -- "$cur")); return; }
  local -a _strata_options
  local -A _strata_value _strata_alias
  _strata_read_help "$bin" "$cmd" || return

  # The words before the cursor: the positionals so far, the control socket; a valued
  # option's separate value is not a positional.
  local i word control= value_next= REPLY
  local -a positional=()
  for ((i = 2; i < COMP_CWORD; i++)); do
    word=${COMP_WORDS[i]}
    if [[ -n $value_next ]]; then
      [[ $value_next == --control ]] && control=$word
      value_next=
    elif [[ $word == -?* ]]; then
      _strata_value_of "$word"
      [[ -n $REPLY && ${COMP_WORDS[i + 1]} != = ]] && value_next=${_strata_alias[$word]:-$word}
    elif [[ $word != = && ${COMP_WORDS[i - 1]} != = ]]; then
      positional+=("$word")
    fi
  done
  [[ -z $option && -n $value_next ]] && option=$value_next

  if [[ -n $option ]]; then
    _strata_value_of "$option"
    # serve names its control socket PATH (it creates it), the clients SOCKET.
    [[ ${_strata_alias[$option]:-$option} == --control ]] && REPLY=SOCKET
    case $REPLY in
      *'|'*) COMPREPLY=($(compgen -W "${REPLY//|/ }" -- "$cur")) ;;
      SOCKET) _strata_files '*.ctl' ;;
      PARENT) _strata_files '*.strata' '*.raw' ;;
      PATH | FILE) _strata_files '*' ;;
      DIR) _strata_files ;;  # directories only (--tls-certs, --allow-parent-dir)
      SNAPSHOT*) _strata_snapshots "$bin" "$control" "${positional[0]:-}" ;;
    esac
    return
  fi
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "${_strata_options[*]}" -- "$cur"))
    return
  fi
  # A positional: after LAYER offline, alone with --control, the NAME of a snapshot (an
  # existing one for delete-snapshot and revert, a new one for snapshot); a file otherwise.
  local name_at=1
  [[ -n $control ]] && name_at=0
  if ((${#positional[@]} == name_at)); then
    case $cmd in
      delete-snapshot | revert) _strata_snapshots "$bin" "$control" "${positional[0]:-}"; return ;;
      snapshot) return ;;
    esac
  fi
  _strata_files '*.strata' '*.raw'
}
complete -F _strata strata
