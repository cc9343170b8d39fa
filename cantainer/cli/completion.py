"""`cantainer completion bash|zsh`: a shell completion script generated from the parser.

No runtime dependency (argcomplete would start Python on every Tab): the script carries the
command tree as shell `case` tables — per command path its subcommands, its options (and which
take a value, and their choices), and whether its positional is a file — and one small function,
``_cantainer_candidates``, written in the subset of sh that bash and zsh share, that walks the
words typed so far and prints the candidates ("__files__": complete file names). bash and zsh
each wrap it in a few lines (compgen/complete; compadd/compdef). Everything after `run`/`exec`'s
command, or after `--`, is the container's, so nothing is offered there.
"""
from __future__ import annotations

import argparse
import sys

from cantainer.cli.parser import Commands

SHELLS = ("bash", "zsh")
FILE_ARGS = {"inventory", "inventory_top", "inventory_path", "file"}  # dests whose values are paths


def register(commands: Commands) -> None:
    completion = commands.add("completion", "print a shell completion script (bash or zsh)", cmd_completion,
                              examples=[
        "source <(cantainer completion bash)                     # this shell; add it to ~/.bashrc to keep it",
        "cantainer completion zsh > \"${fpath[1]}/_cantainer\"     # zsh: a completion function on $fpath",
    ], description="Print a completion script for bash or zsh: commands, subcommands, options, their choices,\n"
                   "and file names where a file is expected (inventories, stack files).")
    completion.add_argument("shell", choices=SHELLS, help="bash or zsh")


def _tree(parser: argparse.ArgumentParser, path: str = ""):
    """(path, parser) for the top level and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _tree(sub, f"{path} {name}".strip())


def tables(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """Per command path: subcommands, flags, valued options, choices, and what its positional is."""
    out = {}
    for path, sub in _tree(parser):
        entry = {"subs": [], "flags": [], "valued": [], "choices": {}, "positional": "", "rest": False}
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                entry["subs"] = list(action.choices)
            elif action.option_strings:
                kind = "flags" if action.nargs == 0 else "valued"
                entry[kind] += action.option_strings
                if action.choices:
                    for flag in action.option_strings:
                        entry["choices"][flag] = [str(c) for c in action.choices]
                if action.dest in FILE_ARGS and action.nargs != 0:
                    for flag in action.option_strings:
                        entry["choices"][flag] = ["__files__"]
            elif action.nargs == argparse.REMAINDER:
                entry["rest"] = True
            elif not entry["positional"]:
                entry["positional"] = ("__files__" if action.dest in FILE_ARGS else
                                       " ".join(str(c) for c in action.choices) if action.choices else "")
        out[path] = entry
    return out


def _case(name: str, rows: list[tuple[str, str]]) -> str:
    body = "".join(f"    {pattern}) printf '%s\\n' {value} ;;\n" for pattern, value in rows)
    return f"{name}() {{\n  case \"$1\" in\n{body}  esac\n}}\n"


def _words(items) -> str:
    return " ".join(f"'{item}'" for item in items) if items else "''"


CANDIDATES = r"""
# _cantainer_candidates CUR WORD...: what may follow WORD... (the words after `cantainer`), one a line
_cantainer_candidates() {
  local cur="$1" cmdpath="" skip="" word positional=0 sub
  shift
  for word in "$@"; do
    if [ -n "$skip" ]; then skip=""; continue; fi
    case "$word" in
      --) return 0 ;;
      -*=*) ;;
      -*) for sub in $(_cantainer_valued "$cmdpath"); do [ "$sub" = "$word" ] && skip="$word"; done ;;
      *)
        sub=""
        for sub in $(_cantainer_subs "$cmdpath") ""; do [ "$sub" = "$word" ] && break; done
        if [ -n "$sub" ]; then cmdpath="${cmdpath:+$cmdpath }$word"
        else
          positional=$((positional + 1))
          [ -n "$(_cantainer_rest "$cmdpath")" ] && return 0
        fi ;;
    esac
  done
  if [ -n "$skip" ]; then _cantainer_choices "$cmdpath $skip"; return 0; fi
  case "$cur" in
    -*) _cantainer_flags "$cmdpath"; _cantainer_valued "$cmdpath" ;;
    *)
      if [ -n "$(_cantainer_subs "$cmdpath")" ]; then _cantainer_subs "$cmdpath"
      elif [ "$positional" -eq 0 ]; then _cantainer_positional "$cmdpath"; fi ;;
  esac
}
"""

BASH = r"""
_cantainer() {
  local cur="${COMP_WORDS[COMP_CWORD]}" IFS=$'\n'
  local -a found
  found=($(_cantainer_candidates "$cur" "${COMP_WORDS[@]:1:COMP_CWORD-1}"))
  if [ "${found[0]}" = "__files__" ]; then
    COMPREPLY=($(compgen -f -- "$cur"))
  else
    COMPREPLY=($(compgen -W "${found[*]}" -- "$cur"))
  fi
}
complete -F _cantainer cantainer
"""

ZSH = r"""
_cantainer() {
  local -a found
  found=(${(f)"$(_cantainer_candidates "$PREFIX" "${(@)words[2,CURRENT-1]}")"})
  if [[ "${found[1]}" == __files__ ]]; then
    _files
  else
    compadd -a found
  fi
}
if (( ! $+functions[compdef] )); then autoload -Uz compinit && compinit -u; fi
compdef _cantainer cantainer
"""


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    data = tables(parser)
    parts = [f"# cantainer completion for {shell}: generated by `cantainer completion {shell}`\n"]
    parts.append(_case("_cantainer_subs", [(f'"{p}"', _words(e["subs"])) for p, e in data.items() if e["subs"]]))
    parts.append(_case("_cantainer_flags", [(f'"{p}"', _words(e["flags"])) for p, e in data.items()]))
    parts.append(_case("_cantainer_valued", [(f'"{p}"', _words(e["valued"])) for p, e in data.items() if e["valued"]]))
    parts.append(_case("_cantainer_choices", [(f'"{p} {flag}"', _words(values)) for p, e in data.items()
                                              for flag, values in e["choices"].items()]))
    parts.append(_case("_cantainer_positional", [(f'"{p}"', _words(e["positional"].split()))
                                                 for p, e in data.items() if e["positional"]]))
    parts.append(_case("_cantainer_rest", [(f'"{p}"', "yes") for p, e in data.items() if e["rest"]]))
    parts.append(CANDIDATES)
    parts.append(BASH if shell == "bash" else ZSH)
    return "".join(parts)


def cmd_completion(args: argparse.Namespace) -> int:
    from cantainer.cli import build_parser

    sys.stdout.write(script(args.shell, build_parser()))
    return 0
