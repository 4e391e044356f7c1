"""`xlsearch-client` (also `xlsearch search|tag|caption|add|delete|stats|health`): the client on the command line.

    xlsearch-client search "一只红色的袋鼠" --top-k 5 [--mode CL|CM|CLM] [--alpha A] [--tag T]... [--json]
    xlsearch-client search --image FILE | --like ID [--top-k K] [--tag T]...   # by image / more like this
                      [--min-score S] [--offset N]                            # cutoff, paging (any search)
    xlsearch-client tag IMAGE [--id] [-k K] [--user-tag T]... [--json]
    xlsearch-client caption IMAGE [--id] [--n-best N] [--recommend] [--json]
    xlsearch-client add PATH... [--caption TEXT | --captions FILE.csv] [--id ID]
    xlsearch-client delete ID...
    xlsearch-client stats
    xlsearch-client health [--service NAME]      # exit 0 when SERVING, 1 otherwise

IMAGE is an image file, or with `--id` the id of an image in the server's index. `--target host:port` (default
$XLSEARCH_TARGET or 127.0.0.1:50051), `--timeout SECONDS`, `--api-key KEY` (default $XLSEARCH_API_KEY) and the TLS
options (`--tls`, `--tls-ca FILE`, `--tls-cert FILE --tls-key FILE`, `--tls-server-name NAME`) go before or after
the command. A failed call prints one line, `<prog>: error: <STATUS_CODE>: <message>`, on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xlsearch_client.client import DEFAULT_TARGET, Client
from xlsearch_client.errors import XlsearchError
from xlsearch_client.table import key_values, render
from xlsearch_client.uploads import (
    IMAGE_SUFFIXES,
    ImageId,
    ImageItem,
    collect_images,
    read_captions,
    read_image,
)
from xlsearch_client.views import caption_report, search_table, tag_table

DEFAULT_TIMEOUT = 10.0
ADD_TIMEOUT = 300.0  # an AddImages call encodes every image before it answers
CAPTION_TIMEOUT = 60.0  # the server's first recommendation encodes the captioner's whole sentence pool
EXIT_ERROR = 2
EXIT_NOT_SERVING = 1


def _connection_args(parser: argparse.ArgumentParser, top_level: bool) -> None:
    # On the sub-commands the defaults are SUPPRESS, so `--target` works before or after the command and a value
    # given before it is not overwritten by the sub-parser's default.
    suppress = argparse.SUPPRESS
    parser.add_argument(
        "--target",
        default=os.environ.get("XLSEARCH_TARGET") or DEFAULT_TARGET if top_level else suppress,
        metavar="HOST:PORT",
        help=f"server address (default: $XLSEARCH_TARGET or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None if top_level else suppress,
        metavar="SECONDS",
        help=f"deadline of the call (default: {DEFAULT_TIMEOUT:g}; caption: {CAPTION_TIMEOUT:g}; "
        f"add: {ADD_TIMEOUT:g})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("XLSEARCH_API_KEY") or None if top_level else suppress,
        metavar="KEY",
        help="sent as 'authorization: Bearer KEY' (default: $XLSEARCH_API_KEY, which `ps` does not show)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=False if top_level else suppress,
        help="connect with TLS, trusting the system's CA certificates",
    )
    for flag, help in (
        ("--tls-ca", "connect with TLS, trusting the CA certificates in this PEM file"),
        ("--tls-cert", "client certificate (PEM) for servers that require mutual TLS; with --tls-key"),
        ("--tls-key", "private key (PEM) of --tls-cert"),
    ):
        parser.add_argument(flag, default=None if top_level else suppress, metavar="FILE", help=help)
    parser.add_argument(
        "--tls-server-name",
        default=None if top_level else suppress,
        metavar="NAME",
        help="the name on the server's certificate, when it differs from the target's host",
    )


def build_parser(prog: str = "xlsearch-client") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Client of an xlsearch server (gRPC).")
    _connection_args(ap, top_level=True)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _connection_args(p, top_level=False)
        return p

    s = command(
        "search", "search the images with a query (Chinese, English or mixed), an image, or an indexed id"
    )
    s.add_argument("query", nargs="?", help="the query text (or give --image / --like)")
    s.add_argument(
        "--image", metavar="FILE", help="search by this image (image-to-image similarity, mode CM)"
    )
    s.add_argument(
        "--like",
        metavar="ID",
        help="more like this indexed image (image-to-image, the image itself left out)",
    )
    s.add_argument("--top-k", type=int, default=10, metavar="K", help="how many hits (default: 10)")
    s.add_argument(
        "--mode",
        type=str.upper,
        choices=("CL", "CM", "CLM"),
        default=None,
        help="CL: vs English captions, CM: vs pixels, CLM: both (default for a text; an image search is CM)",
    )
    s.add_argument("--min-score", type=float, metavar="S", help="drop hits scoring below S (in the mode)")
    s.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N hits (paging)")
    s.add_argument("--alpha", type=float, help="CLM weight of CL in [0, 1] (default: the bundle's)")
    s.add_argument("--tag", action="append", default=[], help="only images with this tag (repeatable)")
    s.add_argument("--json", action="store_true", help="print the full result as JSON")
    s.set_defaults(func=_search)

    t = command("tag", "Chinese tags of an image, with their probabilities and English counterparts")
    _image_args(t)
    t.add_argument(
        "-k",
        type=int,
        metavar="K",
        help="how many tags (default: as many as the tagger predicts for the image)",
    )
    t.add_argument(
        "--user-tag",
        action="append",
        default=[],
        metavar="TAG",
        help="a tag the image is known to carry, from the tagger's vocabulary (repeatable)",
    )
    t.add_argument("--json", action="store_true", help="print the full result as JSON")
    t.set_defaults(func=_tag)

    c = command("caption", "generated Chinese captions of an image (and recommended known sentences)")
    _image_args(c)
    c.add_argument(
        "--n-best", type=int, default=1, metavar="N", help="how many captions (best beams; default: 1)"
    )
    c.add_argument(
        "--recommend", action="store_true", help="also the nearest sentences the captioner was trained on"
    )
    c.add_argument("--json", action="store_true", help="print the full result as JSON")
    c.set_defaults(func=_caption)

    a = command("add", "add image files (or every image under folders) to the index")
    a.add_argument("paths", nargs="+", metavar="PATH")
    captions = a.add_mutually_exclusive_group()
    captions.add_argument("--caption", metavar="TEXT", help="English caption for every image added")
    captions.add_argument(
        "--captions",
        metavar="FILE",
        help="CSV with an 'image,caption' header (or JSONL); image = path relative to its folder argument, "
        "or the file path as given",
    )
    a.add_argument(
        "--id",
        help="id of the image (one image only); default: the path relative to its folder argument, or the "
        "content hash (chosen by the server) for a file argument",
    )
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_add)

    d = command("delete", "remove images from the index by id")
    d.add_argument("ids", nargs="+", metavar="ID")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_delete)

    st = command("stats", "what the server serves (index size, bundle, cache)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_stats)

    h = command("health", "gRPC health check: exit 0 when SERVING, 1 otherwise")
    h.add_argument("--service", default="", help='"" (default), xlsearch.v1.ImageSearch or xlsearch.cache')
    h.set_defaults(func=_health)
    return ap


def _image_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "image", metavar="IMAGE", help="an image file (with --id: the id of an indexed image)"
    )
    parser.add_argument("--id", action="store_true", help="IMAGE is the id of an image in the server's index")


# -- commands -------------------------------------------------------------------------------------------------------


def _client(args: argparse.Namespace, default_timeout: float = DEFAULT_TIMEOUT) -> Client:
    return Client(
        args.target,
        timeout=default_timeout if args.timeout is None else args.timeout,
        api_key=args.api_key,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
    )


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _search(args: argparse.Namespace) -> int:
    given = [
        name
        for name, v in (("a query", args.query), ("--image", args.image), ("--like", args.like))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of a query, --image FILE and --like ID"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    with _client(args) as client:
        if args.query is not None:
            result = client.search(
                args.query,
                args.top_k,
                args.mode or "CLM",
                args.alpha,
                args.tag,
                min_score=args.min_score,
                offset=args.offset,
            )
        else:
            if args.mode not in (None, "CM"):
                raise ValueError(
                    f"a search by image ranks by image-to-image similarity (CM), not {args.mode}"
                )
            image = ImageId(args.like) if args.like else _image_file(args.image)
            result = client.search_image(
                image, args.top_k, args.tag, min_score=args.min_score, offset=args.offset
            )
    if args.json:
        _print_json(result.to_dict())
        return 0
    mode = result.mode or args.mode or "CLM"
    how = f"{mode}, alpha {result.alpha:g}" if mode == "CLM" else mode
    notes = [how, f"{result.total_seconds * 1000:.1f} ms", f"index v{result.index_version}"]
    if result.cached:
        notes.append("cached")
    if result.next_offset:
        notes.append(f"next page: --offset {result.next_offset}")
    what = (
        repr(args.query)
        if args.query is not None
        else f"image {args.image}"
        if args.image
        else f"images like {args.like!r}"
    )
    first = (
        f", ranks {result.offset + 1}-{result.offset + len(result.hits)}"
        if result.offset and result.hits
        else ""
    )
    print(f"{len(result.hits)} hits for {what}{first} ({', '.join(notes)})")
    if result.hits:
        print(search_table(result))
    return 0


def _image_file(name: str) -> bytes:
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file")
    return read_image(path)  # type: ignore[return-value]


def _image(args: argparse.Namespace) -> bytes | ImageId:
    if args.id:
        return ImageId(args.image)
    path = Path(args.image)
    if not path.exists():
        raise FileNotFoundError(f"{args.image}: no such file (add --id if it is the id of an indexed image)")
    if not path.is_file():
        raise ValueError(f"{args.image}: not a file")
    return read_image(path)


def _image_name(args: argparse.Namespace) -> str:
    return f"image id {args.image!r}" if args.id else args.image


def _tag(args: argparse.Namespace) -> int:
    image = _image(args)
    with _client(args) as client:
        result = client.tag(image, k=args.k, user_tags=args.user_tag)
    if args.json:
        _print_json(result.to_dict())
        return 0
    print(f"{len(result.tags)} tag(s) for {_image_name(args)}")
    if result.tags:
        print(tag_table(result))
    return 0


def _caption(args: argparse.Namespace) -> int:
    image = _image(args)
    with _client(args, CAPTION_TIMEOUT) as client:
        result = client.caption(image, n_best=args.n_best, recommend=args.recommend)
    if args.json:
        _print_json(result.to_dict())
        return 0
    print(caption_report(result, _image_name(args), args.recommend))
    return 0


def _add(args: argparse.Namespace) -> int:
    found = collect_images(args.paths)
    if not found:
        raise ValueError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) in {' '.join(args.paths)}")
    if args.id and len(found) != 1:
        raise ValueError(f"--id names one image, but {len(found)} were given")
    captions = read_captions(args.captions) if args.captions else {}
    items = []
    for image in found:
        image_id = args.id or (image.key if image.in_folder else "")
        caption = args.caption if args.caption is not None else captions.pop(image.key, "")
        items.append(ImageItem(image.path, image_id, caption))
    for key in sorted(captions):
        print(f"warning: {args.captions} names an image that is not being added: {key}", file=sys.stderr)
    with _client(args, ADD_TIMEOUT) as client:
        result = client.add_images(items)
    if args.json:
        _print_json(result.to_dict())
        return 0
    rows = [(image_id, str(item.path)) for image_id, item in zip(result.ids, items, strict=False)]
    print(render(("id", "path"), rows))
    print(f"added {result.added} image(s); index version {result.index_version}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.delete(args.ids)
    if args.json:
        _print_json(result.to_dict())
        return 0
    line = f"deleted {result.deleted} image(s); index version {result.index_version}"
    if result.not_found:
        line += f"; not found: {', '.join(result.not_found)}"
    print(line)
    return 0


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats()
    if args.json:
        _print_json(stats.to_dict())
        return 0
    pairs = list(stats.to_dict().items())
    print(key_values([(k, _yes_no(v)) for k, v in pairs]))
    return 0


def _yes_no(value: Any) -> Any:
    return ("yes" if value else "no") if isinstance(value, bool) else value


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else EXIT_NOT_SERVING


# -- entry point ----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, prog: str = "xlsearch-client") -> int:
    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # never die on a terminal that cannot show Chinese
    try:
        return int(args.func(args))
    except XlsearchError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
    except BrokenPipeError:  # `xlsearch-client search ... | head`
        _silence_stdout()
        return EXIT_ERROR
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return EXIT_ERROR


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
