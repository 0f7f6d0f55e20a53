# bash completion for mcpctl(1)                              -*- shell-script -*-
# shellcheck shell=bash disable=SC2207,SC2088
#
# Installed as bash-completion/completions/mcpctl. Works with or without the
# bash-completion package loaded (it uses _filedir when that exists, compgen -f
# otherwise). Server names come from the keeper itself: the function runs
# "mcpctl GLOBAL-OPTIONS servers --json" with the global options already on
# the command line, and takes the "name" values from its output with grep and
# sed; when that fails there are simply no names to offer.

# Prints one configured server name per line; nothing when the keeper cannot
# be asked. $1 is the mcpctl to run, the rest are the global options to pass.
_mcpctl_server_names()
{
    local cmd=$1 out
    shift
    out=$(command -- "$cmd" "$@" servers --json 2>/dev/null </dev/null) || return 0
    # Names are [A-Za-z0-9._-]; any other "name" text would be inside a JSON
    # string and so preceded by a backslash-escaped quote, which this skips.
    printf '%s\n' "$out" |
        grep -o '"name"[[:space:]]*:[[:space:]]*"[A-Za-z0-9._-]*"' |
        sed 's/^.*"\([A-Za-z0-9._-]*\)"$/\1/'
}

# Strips one level of quotes and expands a leading ~ of a word as typed.
_mcpctl_dequote()
{
    local w=$1
    case $w in
    \'*\') w=${w:1:${#w}-2} ;;
    \"*\") w=${w:1:${#w}-2} ;;
    \'* | \"*) w=${w:1} ;;
    esac
    case $w in
    '~') w=$HOME ;;
    '~/'*) w=$HOME/${w:2} ;;
    esac
    printf '%s' "$w"
}

# Completes file names for the word $1; $2 is put in front of each match
# (for --config=FILE when "=" does not break words).
_mcpctl_files()
{
    local cur=$1 prefix=$2 i
    if declare -F _filedir >/dev/null 2>&1; then
        _filedir
    else
        compopt -o filenames 2>/dev/null
        local IFS=$'\n'
        COMPREPLY=($(compgen -f -- "$(_mcpctl_dequote "$cur")"))
    fi
    if [[ -n $prefix ]]; then
        for i in "${!COMPREPLY[@]}"; do
            COMPREPLY[i]=$prefix${COMPREPLY[i]}
        done
    fi
}

_mcpctl()
{
    COMPREPLY=()

    # Rejoin "--opt" "=" "value", which COMP_WORDBREAKS splits apart, so
    # that words[] holds the command line as mcpctl will see it.
    local -a words=()
    local cword=0 i n=${#COMP_WORDS[@]} w
    for ((i = 0; i < n && i <= COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $w == "=" && ${#words[@]} -gt 1 && ${words[${#words[@]}-1]} == --* ]]; then
            words[${#words[@]}-1]+="="
            if ((i < COMP_CWORD)); then
                ((i++))
                words[${#words[@]}-1]+=${COMP_WORDS[i]}
            fi
            continue
        fi
        words+=("$w")
    done
    cword=$((${#words[@]} - 1))
    local cur=${words[cword]} prev=
    ((cword > 0)) && prev=${words[cword - 1]}

    # "--opt=partial": complete the part after "=". When bash broke the
    # word at "=", only that part is replaced; otherwise the whole word is,
    # so the matches keep the "--opt=" in front.
    local eqopt='' eqprefix=''
    if [[ $cur == --*=* ]]; then
        eqopt=${cur%%=*}
        cur=${cur#*=}
        [[ ${COMP_WORDS[COMP_CWORD]} == "$eqopt="* ]] && eqprefix=$eqopt=
    fi

    local cmd=${COMP_WORDS[0]}
    cmd=$(_mcpctl_dequote "$cmd")

    # Global options, up to the command.
    local -a globals=()
    local have_timeout='' command='' ci=''
    for ((i = 1; i < cword; i++)); do
        w=${words[i]}
        case $w in
        --socket | --config | -c | --timeout)
            if ((i + 1 < cword)); then
                globals+=("$w" "$(_mcpctl_dequote "${words[i + 1]}")")
            fi
            [[ $w == --timeout ]] && have_timeout=1
            ((i++))
            ;;
        --socket=* | --config=*)
            globals+=("${w%%=*}" "$(_mcpctl_dequote "${w#*=}")")
            ;;
        --timeout=*)
            globals+=("$w")
            have_timeout=1
            ;;
        --system)
            globals+=("$w")
            ;;
        -*) ;;
        *)
            command=$w
            ci=$i
            break
            ;;
        esac
    done
    # Completion must not hang on a keeper that does not answer.
    [[ -z $have_timeout ]] && globals+=(--timeout 2)

    if [[ -z $command ]]; then
        local opt=$prev
        [[ -n $eqopt ]] && opt=$eqopt
        case $opt in
        --config | -c | --socket)
            _mcpctl_files "$cur" "$eqprefix"
            return 0
            ;;
        --timeout)
            return 0
            ;;
        esac
        # "--OPT=" of an option that takes no value: nothing to offer.
        [[ -n $eqopt ]] && return 0
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W '--socket -c --config --system --timeout
                -V --version -h --help' -- "$cur"))
        else
            COMPREPLY=($(compgen -W 'status servers auth events connect reload tools backup
                restore key help' \
                -- "$cur"))
        fi
        return 0
    fi

    # The command's own words, after the command (and after auth's verb).
    local sub='' first=$((ci + 1))
    if [[ $command == auth ]]; then
        if ((cword == ci + 1)); then
            COMPREPLY=($(compgen -W 'login logout status' -- "$cur"))
            return 0
        fi
        sub=${words[ci + 1]}
        first=$((ci + 2))
    fi
    if [[ $command == key ]]; then
        if ((cword == ci + 1)); then
            COMPREPLY=($(compgen -W 'export import rotate' -- "$cur"))
            return 0
        fi
        sub=${words[ci + 1]}
        first=$((ci + 2))
    fi

    # servers VERB: remove, enable, disable and set take a server's name;
    # add a new name, then its options (or -- and a command).
    if [[ $command == servers && ${words[ci + 1]} != -* ]]; then
        if ((cword == ci + 1)); then
            COMPREPLY=($(compgen -W 'add remove enable disable set' -- "$cur"))
            return 0
        fi
        sub=${words[ci + 1]}
        case $sub in
        remove | enable | disable | set)
            if ((cword == ci + 2)); then
                local names
                names=$(_mcpctl_server_names "$cmd" "${globals[@]}")
                local IFS=$'\n'
                COMPREPLY=($(compgen -W "$names" -- "$cur"))
                return 0
            fi
            [[ $sub == set ]] &&
                COMPREPLY=($(compgen -W '--header-file --header --json' -- "$cur"))
            return 0
            ;;
        add)
            for ((i = ci + 2; i < cword; i++)); do
                [[ ${words[i]} == -- ]] && return 0
            done
            case $prev in
            --protocol)
                COMPREPLY=($(compgen -W 'streamable-http sse stdio' -- "$cur"))
                return 0
                ;;
            --header-file)
                COMPREPLY=($(compgen -f -- "$cur"))
                return 0
                ;;
            --url | --scope | --client-id | --header) return 0 ;;
            esac
            ((cword == ci + 2)) && [[ $cur != -* ]] && return 0
            COMPREPLY=($(compgen -W '--url --protocol --scope --client-id --no-oauth
                --disabled --header-file --header --json' -- "$cur"))
            return 0
            ;;
        esac
    fi

    # After -s/--server (or in --server=NAME): a server name.
    local opt=$prev
    [[ -n $eqopt ]] && opt=$eqopt
    case $opt in
    -s | --server)
        local names
        names=$(_mcpctl_server_names "$cmd" "${globals[@]}")
        local IFS=$'\n'
        COMPREPLY=($(compgen -W "$names" -- "$cur"))
        if [[ -n $eqprefix ]]; then
            for i in "${!COMPREPLY[@]}"; do
                COMPREPLY[i]=$eqprefix${COMPREPLY[i]}
            done
        fi
        return 0
        ;;
    --timeout)
        [[ $command == auth && $sub == login ]] && return 0
        ;;
    esac
    [[ -n $eqopt ]] && return 0

    local opts=
    case $command/$sub in
    status/) opts='--json -s --server' ;;
    servers/ | events/ | reload/) opts='--json' ;;
    auth/login) opts='-s --server --all --no-browser --timeout' ;;
    auth/logout) opts='-s --server --all' ;;
    auth/status) opts='-s --server --json' ;;
    connect/ | tools/)
        # The flag (connect --bridge, tools --json), then one server name,
        # nothing after it.
        local flag=--bridge
        [[ $command == tools ]] && flag=--json
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$flag" -- "$cur"))
            return 0
        fi
        local skip=0
        [[ ${words[ci + 1]} == "$flag" ]] && skip=1
        if ((cword == ci + 1 + skip)); then
            local names
            names=$(_mcpctl_server_names "$cmd" "${globals[@]}")
            local IFS=$'\n'
            COMPREPLY=($(compgen -W "$names" -- "$cur"))
        fi
        return 0
        ;;
    backup/ | restore/)
        # restore --force, then one FILE.
        if [[ $cur == -* ]]; then
            [[ $command == restore ]] && COMPREPLY=($(compgen -W '--force' -- "$cur"))
            return 0
        fi
        local nfiles=0
        for ((i = ci + 1; i < cword; i++)); do
            [[ ${words[i]} != -* ]] && ((nfiles++))
        done
        ((nfiles == 0)) && _mcpctl_files "$cur" ''
        return 0
        ;;
    key/export | key/import)
        # Its flags, a file after --passphrase-file, then one FILE.
        if [[ $prev == --passphrase-file ]]; then
            _mcpctl_files "$cur" ''
            return 0
        fi
        if [[ $cur == -* ]]; then
            local flags='--passphrase-file --plain'
            [[ $sub == import ]] && flags='--passphrase-file --force --next'
            COMPREPLY=($(compgen -W "$flags" -- "$cur"))
            return 0
        fi
        local nfiles=0
        for ((i = ci + 2; i < cword; i++)); do
            [[ ${words[i]} != -* && ${words[i - 1]} != --passphrase-file ]] && ((nfiles++))
        done
        ((nfiles == 0)) && _mcpctl_files "$cur" ''
        return 0
        ;;
    *) return 0 ;;
    esac

    # Leave out what is already there: an option given once, and the other
    # half of "--server NAME | --all".
    local -a left=()
    local o seen
    for o in $opts; do
        seen=
        for ((i = first; i < cword; i++)); do
            w=${words[i]%%=*}
            case $o in
            -s | --server | --all)
                [[ $w == -s || $w == --server || $w == --all ]] && seen=1
                ;;
            *)
                [[ $w == "$o" ]] && seen=1
                ;;
            esac
        done
        [[ -z $seen ]] && left+=("$o")
    done
    # Offer the options on an empty word too: these commands take no other
    # arguments. "-s" is left to those who type it.
    if [[ -z $cur ]]; then
        local -a long=()
        for o in "${left[@]}"; do
            [[ $o == --* ]] && long+=("$o")
        done
        left=("${long[@]}")
    fi
    COMPREPLY=($(compgen -W "${left[*]}" -- "$cur"))
    return 0
} &&
    complete -F _mcpctl mcpctl

# ex: filetype=sh
