"""
Set-up subcommands: ``netecho completion bash|zsh`` (a shell completion
script, made by shtab from the same argparse parsers the command uses, so it
cannot drift) and ``netecho plugin-cache`` (writes Twisted's plugin cache
where netecho's twistd plugin is installed, so that an unprivileged daemon
does not log "Unable to write to plugin cache" at every start).
"""

from __future__ import annotations

import argparse
import os
import sys

from netecho.errors import EXIT_OK, UserError


def completion(args: argparse.Namespace) -> int:
    import shtab

    from netecho.cli import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def plugin_cache(args: argparse.Namespace) -> int:
    from twisted.plugin import IPlugin, getPlugins
    import twisted.plugins

    directories = [d for d in twisted.plugins.__path__ if os.path.exists(os.path.join(d, "netecho_plugin.py"))]
    if not directories:
        raise UserError("plugin-cache: netecho's twistd plugin is not installed (twisted/plugins/netecho_plugin.py)")
    for directory in directories:
        if not os.access(directory, os.W_OK):
            raise UserError(f"plugin-cache: cannot write {directory}: permission denied "
                            "(run it as the user who installed netecho)")
    list(getPlugins(IPlugin))
    for directory in directories:
        cache = os.path.join(directory, "dropin.cache")
        if not os.path.exists(cache):
            raise UserError(f"plugin-cache: {cache} was not written")
        print(f"plugin cache written: {cache}")
    return EXIT_OK


def register(sub) -> None:
    """Add the C{completion} and C{plugin-cache} subcommands."""
    p = sub.add_parser("completion", help="print a shell completion script for netecho",
                       description="Print a completion script: 'netecho completion bash > "
                       "/etc/bash_completion.d/netecho', or for zsh into a directory of your $fpath "
                       "as _netecho.")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(run=completion)
    p = sub.add_parser("plugin-cache", help="write Twisted's plugin cache for netecho's twistd plugin",
                       description="Write twisted/plugins/dropin.cache where netecho is installed (run "
                       "it once after installing, as the installing user), so that an unprivileged "
                       "'twistd netecho' does not log 'Unable to write to plugin cache' at every start.")
    p.set_defaults(run=plugin_cache)
