"""Build small BEIR-format retrieval datasets from documentation in Debian packages.

Run:
    python data/build_datasets.py                  # all of them
    python data/build_datasets.py --only faqs      # one of: manpages, foldoc, pyfaq, faqs, faqs-more,
                                                   # faqs-extra, faqs-wide, debian-faq

Output, under data/beir/<name>/: corpus.jsonl, queries.jsonl, qrels/{train,dev,test}.tsv and
SOURCES.txt (the Debian packages, versions and sha256 used, with their licences).

    manpages  query = a man page's one-line NAME description ("list directory contents");
              relevant = the page text from DESCRIPTION on (grade 2) and pages it names under
              SEE ALSO (grade 1). Pages sharing a one-liner form one query (groups > 3 dropped).
    foldoc    query = the first sentence of a FOLDOC entry with its headword and aliases replaced
              by "___" (a cloze blank: BM25 ignores it, a reader sees where the term was);
              relevant = the rest of the entry (grade 2) and the entries it cross-references
              in {braces} (grade 1). A fixed 5,000-query subsample; every entry is in the corpus.
    pyfaq     query = a Python FAQ question; relevant = its answer (grade 2); distractors =
              sections of the library reference, tutorial and HOWTOs. All titles are empty so
              headings do not leak the question. Held-out test set: every judgement is in
              qrels/test.tsv; nothing is trained or tuned on it.
    faqs      training data in pyfaq's form from other projects' FAQs: query = a FAQ question (its
              heading, without numbering such as "3.14" or "Q:"); relevant = its answer (grade 2).
              Sources: perlfaq1-9, perlunifaq and three module FAQs (perl-doc), the R FAQ
              (r-doc-html), the zsh, git (gitfaq(7)), SQLite, fetchmail, screen, procmail, lftp and
              curl FAQs. Distractors: a fixed subsample of sections of the same packages' manuals
              (perl pods, R manuals, SQLite pages). Titles empty, as in pyfaq. Python's and the
              Debian project's own documents are never used: they are kept for evaluation.
              The curl, zsh and git FAQs are held out of faqs whole (leave-source-out) and form:
    faqs-heldout        their 168 questions (split "dev") against their 168 answers: the
                        development set for choices, on projects the training data never shows.
    faqs-heldout-eq30   the same, every answer cut to its first 30 words, so length tells nothing.
    faqs-more more training data in faqs' form from eleven further projects' FAQs: vim (vim-doc), cvs,
              lsof, sendmail (sendmail-doc), zlib (zlib1g-dev), rxvt-unicode (urxvt(7)), xterm, nano,
              ffmpeg (ffmpeg-doc), mksh and fish (fish-common); only questions with a '?' (these FAQs
              also number section titles). Distractors: sections of the ffmpeg and nano manuals and
              the fish documentation. None of its sources is in faqs or faqs-heldout.
    faqs-extra still more training data in faqs' form from eighteen further projects' FAQs: PuTTY
              (putty-doc), WeeChat (weechat-doc), Privoxy, MPlayer (mplayer-doc), cryptsetup, chrony,
              Midnight Commander (mc-data), slrn, dnsmasq (dnsmasq-base), XZ Utils, vsftpd, w3m,
              GraphicsMagick, Doxygen (doxygen-doc), lxml, Docutils, Django and SQLAlchemy (their -doc
              packages), and from three Perl modules' FAQs (Moose, Mojolicious, Template Toolkit); only
              questions with a '?'. Distractors: sections of the PuTTY, WeeChat, Privoxy, MPlayer, lxml and
              Django manuals and the Mojolicious guides. None of its sources is in faqs, faqs-more or
              faqs-heldout.
    faqs-wide  training data in faqs' form from 163 more projects: every English FAQ in Markdown,
              reStructuredText or plain text that Debian 12 ships and no set above reads, listed with
              pinned versions in data/faqs_wide.tsv and read by three generic parsers (a heading or
              question line with a '?' is a question, its section the answer). No distractors: the
              other answers, most from other projects, are the corpus.
    debian-faq the test set, reported once at the end: query = a question of the Debian project's own
              FAQ (debian-faq; a section heading with a '?', numbering removed); relevant = that
              section's answer (grade 2). Distractors: up to 1,500 sections of the Debian Reference
              (debian-reference-en), a fixed hash-ordered subsample (2.100 has 441 of 20 words or more,
              so all are taken). Titles empty. Every judgement is in qrels/test.tsv; no training set
              reads the Debian project's documents, and nothing is trained or tuned on this one.
              `--only debian-faq` also builds:
    debian-faq-eq30     the same, every document cut to its first 30 words, so length tells nothing.

Determinism: a fixed list of packages pinned to exact versions is fetched with `apt-get download`
into data/cache/debs and unpacked with `dpkg-deb -x` into data/cache/extract (nothing is
installed and the system's /usr/share is never read). Everything is sorted, splits come from the
sha1 of the query text (80/10/10 train/dev/test), and a second build gives byte-identical files.
Each file is written atomically and each dataset directory is built in a temporary directory
and renamed into place. Documents are truncated to 300 words.
"""
import argparse
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from data.beir import write_beir_qrels, write_corpus, write_queries  # noqa: E402
from data.bm25 import tokenize  # noqa: E402
from files import atomic_output, write_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "cache"
MAX_WORDS = 300
SPLITS = (("train", 80), ("dev", 90), ("test", 100))  # cumulative percent of the sha1 bucket

# (package, version) from Debian 12 "bookworm", pinned so the build is reproducible.
MAN_PACKAGES = [
    ("manpages", "6.03-2"), ("manpages-dev", "6.03-2"), ("coreutils", "9.1-1"),
    ("util-linux", "2.38.1-5+deb12u3"), ("findutils", "4.9.0-4"), ("grep", "3.8-5"),
    ("sed", "4.9-1+deb12u1"), ("tar", "1.34+dfsg-1.2+deb12u1"), ("gawk", "1:5.2.1-2"),
    ("diffutils", "1:3.8-4"), ("bash", "5.2.15-2+b13"), ("procps", "2:4.0.2-3"),
    ("iproute2", "6.1.0-3"), ("iputils-ping", "3:20221126-1+deb12u1"), ("nftables", "1.0.6-2+deb12u2"),
    ("openssh-client", "1:9.2p1-2+deb12u10"), ("openssl", "3.0.22-1~deb12u2"),
    ("libssl-doc", "3.0.22-1~deb12u2"), ("git-man", "1:2.39.5-0+deb12u3"), ("rsync", "3.5.0+ds1-0+deb12u1"),
    ("systemd", "252.39-1~deb12u2"), ("kmod", "30+20221128-1"), ("e2fsprogs", "1.47.0-2+b2"),
    ("lvm2", "2.03.16-2"), ("cryptsetup-bin", "2:2.6.1-4~deb12u2"), ("login", "1:4.13+dfsg1-1+deb12u2"),
    ("passwd", "1:4.13+dfsg1-1+deb12u2"), ("sudo", "1.9.13p3-1+deb12u4"), ("debianutils", "5.7-0.5~deb12u1"),
    ("dpkg", "1.21.23"), ("dpkg-dev", "1.21.23"), ("apt", "2.6.2"), ("man-db", "2.11.2-2"),
    ("less", "590-2.1~deb12u2"), ("strace", "6.1-0.1"), ("tcl8.6-doc", "8.6.13+dfsg-2"),
]
FOLDOC_PACKAGES = [("dict-foldoc", "20230119-1")]
PYDOC_PACKAGES = [("python3.11-doc", "3.11.2-6+deb12u9")]
LICENCES = {
    "manpages": "man pages: various free licences per package (see usr/share/doc/<package>/copyright in each .deb)",
    "foldoc": "FOLDOC, Copyright 1985 Denis Howe: GNU Free Documentation License 1.1 or later",
    "pyfaq": "Python documentation: PSF License Agreement (Python Software Foundation License)",
    "faqs": "per package (see usr/share/doc/<package>/copyright in each .deb): perl-doc GPL-1+ or Artistic; "
            "r-doc-html GPL-2; zsh-common Zsh licence; git-man GPL-2; sqlite3-doc public domain; "
            "fetchmail GPL-2+; screen GPL-3+; procmail GPL-2+ or Artistic; lftp GPL-3+; libcurl4-doc curl licence",
    "faqs-more": "per package (see usr/share/doc/<package>/copyright in each .deb): vim-doc Vim licence; cvs GPL-2+; "
                 "lsof Purdue licence; sendmail-doc Sendmail licence; zlib1g-dev zlib licence; rxvt-unicode GPL-2+; "
                 "xterm X11 (MIT) licence; nano GPL-3+ (documentation GFDL-NIV+ or GPL-3+); ffmpeg-doc LGPL-2.1+ "
                 "or GPL-2+; mksh MirOS licence; fish-common GPL-2",
    "faqs-extra": "per package (see usr/share/doc/<package>/copyright in each .deb): putty-doc Expat (MIT); "
                  "weechat-doc GPL-3+; privoxy GPL-2+; mplayer-doc GPL-2+; cryptsetup GPL-2+ (its FAQ "
                  "CC-BY-SA-3.0); chrony GPL-2; mc-data GPL-3+; slrn GPL-2+; dnsmasq-base GPL-2 or GPL-3; "
                  "xz-utils public domain; vsftpd GPL-2; w3m w3m licence (permissive); graphicsmagick Expat "
                  "(MIT); doxygen-doc GPL-2; python-lxml-doc BSD-3-clause; docutils-doc public domain; "
                  "python-django-doc BSD-3-clause; python-sqlalchemy-doc Expat (MIT); libmoose-perl and "
                  "libtemplate-perl GPL-1+ or Artistic; libmojolicious-perl Artistic-2.0",
    "faqs-wide": "per package, listed below (see usr/share/doc/<package>/copyright in each .deb)",
    "debian-faq": "per package (see usr/share/doc/<package>/copyright in each .deb): debian-faq, Copyright "
                  "1996-2003 Software in the Public Interest, verbatim and modified copies permitted under "
                  "an identical permission notice; debian-reference-en GPL-2+",
}


# ================================================================ packages: fetch and unpack

def deb_path(cache_dir, name, version):
    """The .deb for name=version in the cache (apt writes ':' in versions as '%3a'), or None."""
    hits = sorted((cache_dir / "debs").glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
    return hits[0] if hits else None


def fetch(packages, cache_dir, allow_other_versions=False):
    """Download missing .debs with apt-get; returns [(name, version, path)]."""
    debs_dir = cache_dir / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    missing = [(n, v) for n, v in packages if deb_path(cache_dir, n, v) is None]
    if missing and shutil.which("apt-get") is None:
        want = "\n".join(f"  {n}_{v.replace(':', '%3a')}_<arch>.deb" for n, v in missing)
        sys.exit(f"apt-get not found, so these Debian packages cannot be downloaded. Put them in "
                 f"{debs_dir}/ (from any Debian 12 mirror or snapshot.debian.org) and rerun:\n{want}")
    updated = False
    for name, version in missing:
        ok = apt_download(f"{name}={version}", debs_dir)
        if not ok and not updated:  # an old package list may not know the version yet
            subprocess.run(["apt-get", "update"], capture_output=True)
            updated = True
            ok = apt_download(f"{name}={version}", debs_dir)
        if not ok:
            print(f"apt-get download {name}={version}: not in the archive")
            if not allow_other_versions:
                sys.exit(f"apt-get download {name}={version} failed. The pinned version may have left the "
                         f"archive: put {name}_{version.replace(':', '%3a')}_<arch>.deb in {debs_dir}/ "
                         f"(e.g. from snapshot.debian.org), or rerun with --allow-other-versions "
                         f"(the dataset, and its numbers, may then change).")
            print(f"WARNING: {name} {version} unavailable; using the archive's current version instead")
            if not apt_download(name, debs_dir):
                sys.exit(f"apt-get download {name} failed")
    out = []
    for name, version in packages:
        path = deb_path(cache_dir, name, version) or sorted(debs_dir.glob(f"{name}_*.deb"))[-1]
        real = subprocess.run(["dpkg-deb", "-f", str(path), "Version"], capture_output=True, text=True).stdout.strip()
        out.append((name, real, path))
    return out


def apt_download(spec, debs_dir):
    """True when the .deb arrived. A failure is reported by the caller, once its retries are spent
    (a first try often fails only because the package list is old)."""
    r = subprocess.run(["apt-get", "download", spec], cwd=debs_dir, capture_output=True, text=True)
    return r.returncode == 0


def unpack(deb, cache_dir):
    """dpkg-deb -x into data/cache/extract/<deb name>/ (once; unpacked beside it, then renamed)."""
    if shutil.which("dpkg-deb") is None:
        sys.exit("dpkg-deb not found: install dpkg (Debian/Ubuntu) to unpack the .deb files")
    dest = cache_dir / "extract" / deb.stem
    if not dest.exists():
        with atomic_output(dest) as tmp:
            tmp.mkdir()
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    return dest


def sources_txt(name, debs):
    lines = [f"dataset: {name}", "built by: python data/build_datasets.py (Debian 12 bookworm packages)",
             f"licence: {LICENCES[name]}", "packages (name version sha256 file):"]
    for pkg, version, path in debs:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"  {pkg} {version} {sha} {path.name}")
    return "\n".join(lines) + "\n"


# ================================================================ shared utilities

def sha1(text):
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def split_of(query_text):
    """train/dev/test from the sha1 of the normalised query text: stable across builds and corpora."""
    bucket = int(sha1(norm_text(query_text)), 16) % 100
    return next(name for name, upper in SPLITS if bucket < upper)


def norm_text(text):
    return " ".join(text.lower().split()).rstrip(".")


def words(text, n=MAX_WORDS):
    return " ".join(text.split()[:n])


def query_id(prefix, text):
    return f"{prefix}-{sha1(norm_text(text))[:10]}"


def write_dataset(name, corpus, queries, qrels_by_split, sources):
    """Write everything into a temporary sibling of data/beir/<name>, then swap it into place."""
    out = ROOT / "beir" / name
    with atomic_output(out) as tmp:
        write_corpus(tmp / "corpus.jsonl", corpus)
        write_queries(tmp / "queries.jsonl", queries)
        for split, qrels in qrels_by_split.items():
            write_beir_qrels(tmp / "qrels" / f"{split}.tsv", qrels)
        write_atomic(tmp / "SOURCES.txt", sources)
    doc_words = [len(d["text"].split()) for d in corpus.values()]
    sizes = " | ".join(f"{s} {len(q)}" for s, q in qrels_by_split.items())
    print(f"{name}: queries {sizes} | documents {len(corpus)} | "
          f"mean doc words {sum(doc_words) / max(len(doc_words), 1):.1f} -> {out}")


def split_qrels(qrels, queries):
    by_split = {s: {} for s, _ in SPLITS}
    for qid in sorted(qrels):
        by_split[split_of(queries[qid])][qid] = qrels[qid]
    return by_split


# ================================================================ roff (man pages)

# groff special characters we meet in man pages; anything else becomes ""
ROFF_CHARS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "bu": "\u2022", "aq": "'", "dq": '"',
    "lq": '"', "rq": '"', "oq": "'", "cq": "'", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122",
    "ga": "`", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "ba": "|", "br": "|", "at": "@",
    "sh": "#", "dg": "\u2020", "de": "\u00b0", "mu": "\u00d7", "pl": "+", "eq": "=", "sc": "\u00a7",
    "->": "\u2192", "<-": "\u2190", ">=": "\u2265", "<=": "\u2264", "!=": "\u2260", "Fo": "\u00ab",
    "Fc": "\u00bb", "fo": "\u2039", "fc": "\u203a", "ua": "\u2191", "da": "\u2193", "ss": "\u00df",
    "+-": "\u00b1", "lh": "\u261c", "rh": "\u261e", "or": "|", "ul": "_", "ru": "_", "ci": "\u25cb",
}
# strings most pages use; pod2man's quote strings (C`, C') are empty on terminals
ROFF_STRINGS = {"Aq": "'", "lq": '"', "rq": '"', "R": "\u00ae", "Tm": "\u2122", "C`": '"', "C'": '"',
                'L"': '"', 'R"': '"', "--": "\u2014", "PI": "pi"}
_ROFF_ESC = re.compile(
    r"\\(?:(?P<font>f(?:\[[^\]]*\]|\(..|.))"
    r"|(?P<size>s(?:[+-]?\d|[+-]?\(\d\d|\([+-]?\d\d|\[[^\]]*\]|'[^']*'))"
    r"|\*(?:\[(?P<s1>[^\]]*)\]|\((?P<s2>..)|(?P<s3>.))"
    r"|(?P<reg>n[+-]?(?:\[[^\]]*\]|\(..|.))"
    r"|\((?P<c2>..)"
    r"|\[(?P<cn>[^\]]*)\]"
    r"|N'(?P<num>\d+)'"
    r"|(?P<quoted>[hvwoXDlLbxRSZ]'[^']*')"
    r"|(?P<colour>[mM](?:\[[^\]]*\]|\(..|.))"
    r"|(?P<one>.))", re.S)
_ONE = {"-": "-", "e": "\\", "\\": "\\", "0": " ", "~": " ", " ": " ", "t": " ", "'": "'", "`": "`",
        ".": ".", "E": "\\"}


def roff_unescape(s, strings=ROFF_STRINGS):
    """Replace roff escapes (fonts, sizes, special characters, strings) by plain text."""
    def sub(m):
        if m.group("font") or m.group("size") or m.group("reg") or m.group("quoted") or m.group("colour"):
            return ""
        name = m.group("s1") or m.group("s2") or m.group("s3")
        if name is not None:
            return strings.get(name, ROFF_STRINGS.get(name, ""))
        name = m.group("c2") or m.group("cn")
        if name is not None:
            if re.fullmatch(r"u[0-9A-Fa-f]{4,5}", name):
                return chr(int(name[1:], 16))
            if name.startswith("char") and name[4:].isdigit():
                return chr(int(name[4:]))
            return ROFF_CHARS.get(name, "")
        if m.group("num"):
            return chr(int(m.group("num")))
        c = m.group("one")
        return _ONE.get(c, "" if c.isalnum() or c in "&|^%:/,{}!?c\n" else c)
    return _ROFF_ESC.sub(sub, s)


def roff_args(s):
    """Split a macro's arguments: blanks separate, "double quotes" group, "" inside quotes is a quote."""
    args, i, n = [], 0, len(s)
    while i < n:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            break
        if s[i] == '"':
            i += 1
            buf = []
            while i < n:
                if s[i] == '"':
                    if i + 1 < n and s[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(s[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and s[j] not in " \t":
                j += 1
            args.append(s[i:j])
            i = j
    return args


# man macros whose arguments are printed, joined by a space or concatenated (alternating fonts)
_JOINED = {"B", "I", "SM", "SB", "SY", "OP", "QW", "PQ", "QR", "UL", "AP", "MT", "Nm", "TQ"}
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
# macros that only lay out the page
_LAYOUT = {"PP", "LP", "P", "RS", "RE", "TP", "PD", "HP", "UE", "ME", "EX", "EE", "YS", "DT", "AT",
           "UC", "BS", "BE", "VS", "VE", "CS", "CE", "AS", "SO", "SE", "DS", "DE", "Sp", "Vb", "Ve",
           "IX", "UR", "LO", "RT", "ID", "Id", "TE", "TH"}
# mdoc (BSD) macros: their names are dropped from argument lists
_MDOC = set("Dd Dt Os Sh Ss Pp Nm Nd Xr Fl Ar Op Oo Oc Cm Ic Pa Ev Va Dv Er Sx Em Sy Li Bl El Bd Ed It "
            "Dq Do Dc Qq Qo Qc Sq So Sc Pq Po Pc Ql Ns No Xo Xc An Lk Mt Ux Bx At Ox Nx Fx Bsx Ta Aq Ao "
            "Ac Bq Bo Bc Brq Bro Brc Fn Fa Ft Fd Fo Fc In Vt Lb Rs Re %A %T %D %J %N %O %P %V %B %I %R "
            "Cd Ms Tn St Ad Ud Bf Ef Dl D1 Tg Eo Ec Ex Rv Pf Sm Ap Db Dx".split())

_MDOC_NAMES = {"Ux": "UNIX", "Bx": "BSD", "Ox": "OpenBSD", "Nx": "NetBSD", "Fx": "FreeBSD", "Bsx": "BSD/OS"}


def mdoc_line(macro, args, page_name):
    """Text of an mdoc line: drop macro names, 'Fl x' -> '-x', 'Xr ls 1' -> 'ls(1)', 'Nd' -> ' - '."""
    toks = [macro] + args
    out, i = [], 0
    while i < len(toks):
        t = toks[i]
        if t == "Fl":
            nxt = toks[i + 1] if i + 1 < len(toks) and toks[i + 1] not in _MDOC else ""
            out.append("-" + nxt)
            i += 2 if nxt else 1
            continue
        if t == "Xr" and i + 2 < len(toks):
            out.append(f"{toks[i + 1]}({toks[i + 2]})")
            i += 3
            continue
        if t == "Sm":  # spacing mode on/off: layout only
            i += 2
            continue
        if t in _MDOC_NAMES:
            out.append(_MDOC_NAMES[t])
        elif t == "Nd":
            out.append("-")
        elif t == "Nm" and (i + 1 >= len(toks) or toks[i + 1] in _MDOC or not toks[i + 1][0].isalnum()):
            out.append(page_name)
        elif t not in _MDOC:
            out.append(t)
        i += 1
    # closing punctuation is a separate argument in mdoc ("Ar file ,"): attach it
    return re.sub(r" ([.,;:)\]])(?= |$)", r"\1", " ".join(out))


def parse_roff(src):
    """Man page source (man or mdoc macros) -> (name, section, [(HEADING, text), ...]).

    Text is plain and whitespace-collapsed. Macro definitions, conditionals (.if/.ie/.el, both
    branches skipped) and tbl format lines are dropped; .SS headings stay in the text.
    """
    src = src.replace("\\\n", "")  # escaped newline: continuation line
    strings = dict(ROFF_STRINGS)
    name, section, page_name = "", "", ""
    sections, heading, buf = [], None, []
    skip_until, cond_depth, in_table, table_fmt, want_heading = None, 0, False, False, False

    def flush():
        if heading is not None:
            sections.append((heading, " ".join(" ".join(buf).split())))

    for line in src.split("\n"):
        if skip_until is not None:  # inside .de/.ig: until the '..' line
            if line.strip() == skip_until:
                skip_until = None
            continue
        if cond_depth > 0:  # inside a skipped \{ ... \} block
            cond_depth += line.count("\\{") - line.count("\\}")
            continue
        line = re.sub(r'(?<!\\)\\["#].*', "", line)  # comments
        if line[:1] in (".", "'"):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            macro, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            if macro in ("de", "de1", "am", "ig"):
                skip_until = ".." if macro != "ig" or not rest.strip() else "." + rest.strip()
                continue
            if macro in ("if", "ie", "el", "while"):
                cond_depth = max(0, line.count("\\{") - line.count("\\}"))
                continue
            if macro == "ds":
                k, _, v = rest.partition(" ")
                strings[k] = roff_unescape(v[1:] if v.startswith('"') else v, strings)
                continue
            if macro == "TS":
                in_table, table_fmt = True, True
                continue
            if macro == "TE":
                in_table = False
                continue
            if macro in ("TH", "Dt"):
                a = roff_args(rest)
                name, section = (a + ["", ""])[:2]
                page_name = name if macro == "TH" else name.lower()
                continue
            if macro in ("SH", "Sh"):
                flush()
                heading, buf = roff_unescape(" ".join(roff_args(rest))).strip().upper(), []
                want_heading = not rest.strip()
                continue
            if macro in ("SS", "Ss"):
                buf.append(roff_unescape(" ".join(roff_args(rest))))
                continue
            if macro in _ALTERNATING:
                buf.append(roff_unescape("".join(roff_args(rest))))
            elif macro in _JOINED and macro != "Nm":
                buf.append(roff_unescape(" ".join(roff_args(rest))))
            elif macro == "IP":
                a = roff_args(rest)
                buf.append(roff_unescape(a[0]) if a else "")
            elif macro in _MDOC:
                buf.append(roff_unescape(mdoc_line(macro, roff_args(rest), page_name)))
            elif macro not in _LAYOUT and macro[:1].isupper():
                buf.append(roff_unescape(" ".join(roff_args(rest))))  # unknown package macro
            # anything else is a lowercase roff request (.sp, .br, .nf, .in ...): no text
            continue
        if in_table:
            if table_fmt:  # format section ends with a line ending in '.'
                table_fmt = not line.rstrip().endswith(".")
                continue
            if line.strip() in ("_", "=", "T}", "T{"):
                continue
            line = line.replace("T{", " ").replace("T}", " ").replace("\t", " ")
        text = roff_unescape(line)
        if want_heading:  # '.SH' on its own line: the heading is the next text line
            heading, want_heading = text.strip().upper(), False
            continue
        buf.append(text)
    flush()
    return name, section, sections


# sections that never describe what the page is about
_BOILERPLATE = {"SEE ALSO", "COLOPHON", "AUTHOR", "AUTHORS", "REPORTING BUGS", "COPYRIGHT", "LICENSE",
                "GIT", "KEYWORDS", "HISTORY", "AVAILABILITY", "BUGS", "NOTES", "CONFORMING TO",
                "STANDARDS", "VERSIONS", "ATTRIBUTES", "MAINTAINER", "SYNOPSIS"}


def man_page_record(sections):
    """(one-liner, body, see_also_text) or None. body: text from DESCRIPTION on, no boilerplate."""
    by_heading = dict(sections)
    name_line = by_heading.get("NAME", "")
    m = re.search(r"\s[-\u2013\u2014]+\s", " " + name_line + " ")
    if not m:
        return None
    one_liner = (" " + name_line + " ")[m.end():].strip()
    heads = [h for h, _ in sections]
    start = next((i for i, h in enumerate(heads) if h.startswith("DESCRIPTION")), None)
    if start is None:
        start = next((i for i, h in enumerate(heads) if h not in ("NAME", "SYNOPSIS")), len(heads))
    body = " ".join(t for h, t in sections[start:] if h not in _BOILERPLATE and h != "NAME")
    # drop sentences that repeat the one-liner (compared as BM25 tokens, so "lists" matches
    # "list"), so the query is not copied into its document
    key = " " + " ".join(tokenize(one_liner)) + " "
    sentences = re.split(r"(?<=[.!?])\s+", body)
    body = " ".join(s for s in sentences if key not in " " + " ".join(tokenize(s)) + " ")
    return one_liner, words(body), by_heading.get("SEE ALSO", "")


def read_man_source(path):
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def build_manpages(cache_dir, allow_other_versions=False):
    debs = fetch(MAN_PACKAGES, cache_dir, allow_other_versions)
    pages, aliases = {}, {}  # key "ls.1" -> (sections); alias key -> target key
    for pkg, _, deb in debs:
        root = unpack(deb, cache_dir)
        # English only: usr/share/man/man*/ (translations live in usr/share/man/<lang>/man*/)
        for path in sorted((root / "usr/share/man").glob("man*/*")):
            key = path.name[:-3] if path.name.endswith(".gz") else path.name
            if key in pages or key in aliases:
                continue  # an earlier package in the list wins
            if path.is_symlink():  # alias page: read the link name only, never follow it
                target = os.path.basename(os.readlink(path))
                aliases[key] = target[:-3] if target.endswith(".gz") else target
                continue
            if not path.is_file():
                continue
            src = read_man_source(path)
            so = re.fullmatch(r"(?:\s*\.\\\".*\n|\s*\n)*\s*\.so\s+(\S+)\s*", src)
            if so:  # a page that only includes another one is an alias
                aliases[key] = os.path.basename(so.group(1)).removesuffix(".gz")
                continue
            pages[key] = (pkg, parse_roff(src)[2])

    corpus, one_liners, see_also = {}, {}, {}
    for key in sorted(pages):
        rec = man_page_record(pages[key][1])
        if rec is None or len(rec[1].split()) < 5:
            continue
        one_liner, body, see = rec
        name, _, sec = key.rpartition(".")
        corpus[key] = {"title": f"{name}({sec})", "text": body}
        one_liners[key], see_also[key] = one_liner, see

    by_name = {}
    for key in sorted(corpus):
        by_name.setdefault(key.rpartition(".")[0], []).append(key)

    def resolve(name, sec):
        key = f"{name}.{sec}"
        for _ in range(5):  # follow alias chains a few steps
            if key in corpus:
                return key
            key = aliases.get(key)
            if key is None:
                break
        # "ssl(7)" may be installed as "ssl.7ssl"
        return next((k for k in by_name.get(name, []) if k.rpartition(".")[2].startswith(sec)), None)

    groups = {}
    for key in sorted(one_liners):
        groups.setdefault(norm_text(one_liners[key]), []).append(key)
    queries, qrels = {}, {}
    for group_key, keys in sorted(groups.items()):
        if len(keys) > 3 or len(group_key.split()) < 2:
            continue  # generic one-liners ("overview") or very short ones make poor queries
        text = one_liners[keys[0]]
        qid = query_id("man", text)
        rels = {}
        for k in keys:
            for name, sec in re.findall(r"([\w.:+-]+)\s?\((\d\w*)\)", see_also[k]):
                target = resolve(name, sec)
                if target is not None and target not in keys:
                    rels[target] = 1
        rels.update({k: 2 for k in keys})
        queries[qid], qrels[qid] = text, rels
    write_dataset("manpages", corpus, queries, split_qrels(qrels, queries), sources_txt("manpages", debs))


# ================================================================ FOLDOC (dictd database)

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(s):
    """dictd .index numbers are base-64 digits, most significant first."""
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def parse_foldoc(index_text, dict_bytes):
    """-> {headword: (aliases, body)} where body is the whitespace-collapsed entry text."""
    by_offset = {}
    for line_no, line in enumerate(index_text.split("\n"), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"foldoc.index, line {line_no}: expected 'headword<TAB>offset<TAB>length'")
        by_offset.setdefault((dictd_number(parts[1]), dictd_number(parts[2])), set()).add(parts[0])
    entries = {}
    for (off, length), names in sorted(by_offset.items()):
        if any(n.startswith("00-database") or n.startswith("00database") for n in names):
            continue
        text = dict_bytes[off:off + length].decode("utf-8", errors="replace").strip("\n")
        head, _, body = text.partition("\n\n")
        header = [h.strip() for line in head.split("\n") for h in line.split("%%%") if h.strip()]
        if not header or not body.strip():
            continue
        aliases = sorted(set(header) | names, key=lambda a: (-len(a), a))
        entries[header[0]] = (aliases, " ".join(body.split()))
    return entries


def mask(text, aliases, blank="___"):
    """Replace every alias (whole words, any case) by the blank."""
    pattern = "|".join(re.escape(a) for a in aliases)  # longest first, so 'ADT' does not split 'ADTs'
    return re.sub(rf"(?<!\w)(?:{pattern})(?!\w)", blank, text, flags=re.I)


def build_foldoc(cache_dir, allow_other_versions=False, n_queries=5000):
    debs = fetch(FOLDOC_PACKAGES, cache_dir, allow_other_versions)
    root = unpack(debs[0][2], cache_dir) / "usr/share/dictd"
    entries = parse_foldoc((root / "foldoc.index").read_text(encoding="utf-8"),
                           gzip.decompress((root / "foldoc.dict.dz").read_bytes()))
    lookup, corpus, first, refs = {}, {}, {}, {}
    doc_ids = {}
    for head in sorted(entries):
        doc_id = re.sub(r"\s+", "_", head)
        while doc_id in corpus:
            doc_id += "~"  # same headword twice: keep both
        aliases, body = entries[head]
        body = re.sub(r"\s*\(\d{4}-\d\d-\d\d\)\s*$", "", body)   # the trailing "(2003-07-03)" date
        body = re.sub(r"^(<[^>]*>\s*)+", "", body)               # the leading "<programming>" tags
        plain = re.sub(r"\{([^{}]*)\}", r"\1", body)
        if re.fullmatch(r"(See )?\{[^{}]*\}\.?", body):           # a redirect, not an entry
            continue
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(\"{])", body, maxsplit=1)
        rest = re.sub(r"\{([^{}]*)\}", r"\1", sentences[1]) if len(sentences) > 1 else ""
        doc_ids[head] = doc_id
        corpus[doc_id] = {"title": head, "text": words(rest if len(rest.split()) >= 5 else plain)}
        if len(rest.split()) >= 5:
            query = mask(re.sub(r"\{([^{}]*)\}", r"\1", sentences[0]), aliases)
            if len(re.findall(r"\w+", query.replace("___", ""))) >= 3:
                first[doc_id] = query
        refs[doc_id] = re.findall(r"\{([^{}]*)\}", body)
        for a in aliases:
            lookup.setdefault(a.lower(), doc_id)
    # redirects point at their target, so "{ADT}" still finds "abstract data type"
    for head in sorted(entries):
        body = entries[head][1]
        m = re.fullmatch(r"(?:<[^>]*>\s*)*(?:See )?\{([^{}]*)\}\.?(?:\s*\(\d{4}-\d\d-\d\d\))?", body)
        if m and m.group(1).lower() in lookup:
            for a in entries[head][0]:
                lookup.setdefault(a.lower(), lookup[m.group(1).lower()])

    counts = {}
    for q in first.values():
        counts[norm_text(q)] = counts.get(norm_text(q), 0) + 1
    candidates = sorted((d for d in first if counts[norm_text(first[d])] == 1), key=lambda d: sha1(d))
    queries, qrels = {}, {}
    for doc_id in sorted(candidates[:n_queries]):
        qid = query_id("foldoc", first[doc_id])
        rels = {lookup[r.lower()]: 1 for r in refs[doc_id] if r.lower() in lookup}
        rels[doc_id] = 2
        queries[qid], qrels[qid] = first[doc_id], rels
    write_dataset("foldoc", corpus, queries, split_qrels(qrels, queries), sources_txt("foldoc", debs))


# ================================================================ Python docs (HTML)

class SphinxSections(HTMLParser):
    """Split a Sphinx HTML page's main body into sections: [(level, heading, anchor, text)]."""
    BLOCK = {"p", "div", "li", "ul", "ol", "dl", "dt", "dd", "pre", "br", "tr", "td", "th", "table",
             "section", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections = [[0, "", "", []]]
        self.body_depth = 0    # >0 while inside <div class="body" role="main">
        self.skip_depth = 0    # >0 inside elements whose text we drop
        self.skip_tag = None
        self.heading = None    # [level, text parts, anchor] while inside <hN>

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if self.body_depth == 0:
            if tag == "div" and "body" in cls and a.get("role") == "main":
                self.body_depth = 1
            return
        if tag == "div":
            self.body_depth += 1
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        if (tag == "nav" or (tag == "a" and "headerlink" in cls) or tag in ("script", "style")):
            if tag == "a" and self.heading is not None:
                self.heading[2] = (a.get("href") or "").lstrip("#")
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.heading = [int(tag[1]), [], ""]
        elif tag in self.BLOCK:
            self._text(" ")

    def handle_endtag(self, tag):
        if self.body_depth == 0:
            return
        if tag == "div":
            self.body_depth -= 1
        if self.skip_depth:
            if tag == self.skip_tag:
                self.skip_depth -= 1
            return
        if self.heading is not None and tag == f"h{self.heading[0]}":
            level, parts, anchor = self.heading
            self.heading = None
            self.sections.append([level, " ".join("".join(parts).split()), anchor, []])
        elif tag in self.BLOCK:
            self._text(" ")

    def handle_data(self, data):
        if self.body_depth and not self.skip_depth:
            self._text(data)

    def _text(self, s):
        (self.heading[1] if self.heading is not None else self.sections[-1][3]).append(s)

    def result(self):
        return [(lvl, head, anchor, " ".join("".join(parts).split())) for lvl, head, anchor, parts in self.sections]


def html_sections(text):
    p = SphinxSections()
    p.feed(text)
    p.close()
    return p.result()


def build_pyfaq(cache_dir, allow_other_versions=False, n_distractors=4000):
    debs = fetch(PYDOC_PACKAGES, cache_dir, allow_other_versions)
    root = unpack(debs[0][2], cache_dir) / f"usr/share/doc/{PYDOC_PACKAGES[0][0].removesuffix('-doc')}/html"
    corpus, queries, qrels = {}, {}, {}
    for path in sorted((root / "faq").glob("*.html")):
        if path.name == "index.html" or path.is_symlink():
            continue
        for level, head, anchor, text in html_sections(path.read_text(encoding="utf-8")):
            # every titled FAQ section with an answer is a question (a few are statements:
            # "My class defines __del__ but it is not called..."); category headings have no text
            if level < 2 or len(text.split()) < 5:
                continue
            doc_id = f"faq/{path.stem}#{anchor}"
            qid = query_id("pyfaq", head)
            if qid in queries:
                continue  # the same question twice: keep the first
            corpus[doc_id] = {"title": "", "text": words(text)}
            queries[qid], qrels[qid] = head, {doc_id: 2}
    distractors = {}
    for part in ("library", "tutorial", "howto"):
        for path in sorted((root / part).glob("*.html")):
            if path.is_symlink():
                continue
            for i, (level, head, anchor, text) in enumerate(html_sections(path.read_text(encoding="utf-8"))):
                if len(text.split()) >= 20:
                    distractors[f"{part}/{path.stem}#{anchor or i}"] = {"title": "", "text": words(text)}
    # a fixed, hash-ordered subsample keeps the corpus at a few thousand documents
    for doc_id in sorted(distractors, key=sha1)[:n_distractors]:
        corpus[doc_id] = distractors[doc_id]
    write_dataset("pyfaq", corpus, queries, {"test": qrels}, sources_txt("pyfaq", debs))


# ================================================================ FAQs from other projects (POD, roff, HTML, text)

# Never Python's documentation (pyfaq is built from it) nor the Debian project's own documents
# (debian-faq, debian-reference, ...): both are kept for held-out evaluation.
FAQ_PACKAGES = [
    ("perl-doc", "5.36.0-7+deb12u4"), ("r-doc-html", "4.2.2.20221110-2"), ("zsh-common", "5.9-4"),
    ("git-man", "1:2.39.5-0+deb12u3"), ("sqlite3-doc", "3.40.1-2+deb12u2"), ("fetchmail", "6.4.37-1"),
    ("screen", "4.9.0-4"), ("procmail", "3.22-27"), ("lftp", "4.9.2-2+b1"), ("libcurl4-doc", "7.88.1-10+deb12u15"),
]
PERL_FAQS = [f"perlfaq{i}" for i in range(1, 10)] + ["perlunifaq"]
PERL_MODULE_FAQS = ["Net::libnetFAQ", "IO::Compress::FAQ", "ExtUtils::MakeMaker::FAQ"]  # pod2man output only
PERL_MANUALS = ["perlfunc", "perlop", "perlsyn", "perlvar", "perlre", "perlretut", "perlrun", "perldata",
                "perlsub", "perlref", "perlreftut", "perlootut", "perlobj", "perlipc", "perlport", "perldebug",
                "perlintro", "perlrequick", "perlsec", "perlunicode", "perlunitut", "perlopentut",
                "perlpacktut", "perlstyle", "perltrap", "perlmod", "perlform", "perlperf", "perlfork",
                "perlthrtut", "perllocale"]
SQLITE_SKIP = {"faq.html", "changes.html", "releaselog.html", "news.html", "chronology.html"}  # FAQ, release notes
R_MANUALS = ["R-intro", "R-data", "R-admin", "R-lang", "R-exts", "R-ints"]


def slug(text, n=60):
    """'How do I sort a hash?' -> 'How-do-I-sort-a-hash': a readable, tab- and space-free id part."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:n].rstrip("-") or "x"


def clean_question(text):
    """Drop leading numbering ('3.14', '3.1:', '(3)', 'F1.', 'Q:') and collapse whitespace."""
    text = " ".join(text.split())
    return re.sub(r"^(?:Q:|\(\d+\)|[A-Z]?\d+(?:\.\d+)*[.:]?)\s+", "", text)


# ---------------------------------------------------------------- POD (perl-doc)

_POD_ESCAPES = {"lt": "<", "gt": ">", "sol": "/", "verbar": "|", "quot": '"', "amp": "&", "apos": "'"}


def pod_code(m):
    letter, body = m.group(1), m.group(2)
    if letter in "XZ":      # index entries, zero-width marks
        return ""
    if letter == "E":       # E<lt>, E<gt>, E<0x263A>, E<233>
        if body.isdigit():
            return chr(int(body))
        return chr(int(body, 16)) if body.startswith("0x") else _POD_ESCAPES.get(body, "")
    if letter == "L":       # L<text|target>, L<perlfunc/open>, L</"section">
        return body.split("|")[0] if "|" in body else body.replace('"', "").strip("/")
    return body             # C<code>, B<bold>, I<italic>, F<file>, S<no break>


def pod_text(s):
    """POD formatting codes -> plain text: C<x> -> x, C<< $a <=> $b >> -> $a <=> $b, E<lt> -> <."""
    s = re.sub(r"[XZ]<<+\s.*?\s>>+", "", s, flags=re.S)
    s = re.sub(r"[A-Z]<<+\s+(.*?)\s+>>+", r"\1", s, flags=re.S)
    while True:  # innermost codes first, so B<C<x>> works
        new = re.sub(r"([A-Z])<([^<>]*)>", pod_code, s)
        if new == s:
            return s
        s = new


def pod_sections(src, commands):
    """POD source -> [(command, heading, text)], a new section at each '=command' in commands.
    Other headings and =item labels stay in the text; =begin/=end and =for blocks are dropped."""
    sections, skipping = [["", "", []]], False
    for para in re.split(r"\n[ \t]*\n", src.replace("\r\n", "\n")):
        m = re.match(r"=(\w+)\s*(.*)", para, re.S)
        if m:
            cmd, rest = m.group(1), " ".join(m.group(2).split())
            if cmd in ("begin", "end"):
                skipping = cmd == "begin"
            elif cmd in commands:
                sections.append([cmd, pod_text(rest), []])
            elif cmd == "item" or cmd.startswith("head"):
                sections[-1][2].append(pod_text(rest))
            continue
        if not skipping:
            sections[-1][2].append(para if para[:1] in " \t" else pod_text(para))  # verbatim code stays
    return [(cmd, head, " ".join(" ".join(text).split())) for cmd, head, text in sections]


def perl_faq(src):
    """perlfaq*.pod: every =head2 is a question, its text the answer; =head1 are categories."""
    return [(head, text) for cmd, head, text in pod_sections(src, ("head1", "head2")) if cmd == "head2"]


# ---------------------------------------------------------------- roff (gitfaq, pod2man module FAQs)

def roff_faq(src, question_re, heading_re=r"^\.SH.*$"):
    """Roff source -> [(question, answer)]: a question starts at each match of question_re (group 1
    is its text); its answer runs to the next question or heading (heading_re: .SH by default)."""
    marks = [(m.start(), m.end(), m.group(1)) for m in re.finditer(question_re, src, re.M)]
    marks = sorted(marks + [(m.start(), m.end(), None) for m in re.finditer(heading_re, src, re.M)])
    out = []
    for i, (_, end, question) in enumerate(marks):
        if question is None:
            continue  # a .SH section heading: a category, never a question
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(src)
        answer = dict(parse_roff(".SH ANSWER\n" + src[end:stop])[2]).get("ANSWER", "")
        out.append((roff_unescape(question).strip(), answer))
    return out


GITFAQ_QUESTION = r"^\.PP\n([^.\n].*)\n\.RS 4$"          # .PP / question line / .RS 4 / answer / .RE
POD2MAN_QUESTION = r'^\.(?:SS|IP) "(.*)"(?: 4)?$'         # =head2 -> .SS, =item -> .IP "..." 4


# ---------------------------------------------------------------- HTML (texinfo, sqlite, fetchmail)

_BLOCK_TAG = re.compile(r"</?(?:p|div|br|li|ul|ol|dl|dt|dd|pre|tr|td|th|table|h\d|blockquote|hr)\b[^>]*>", re.I)


def html_text(fragment):
    """An HTML fragment -> whitespace-collapsed text (block tags become spaces, inline tags vanish)."""
    fragment = re.sub(r"(?is)<(script|style|head)\b.*?</\1>", " ", fragment)
    fragment = re.sub(r"<[^>]*>", "", _BLOCK_TAG.sub(" ", fragment))
    return " ".join(html.unescape(fragment).split())


def html_heading_sections(page):
    """HTML page -> [(level, heading, text)] split at <h1>..<h6>; text before the first heading
    (menus) is dropped, as are comments and texinfo's navigation bars and table of contents."""
    page = re.sub(r"(?s)<!--.*?-->", " ", page)
    page = re.sub(r'(?s)<div class="(?:header|nav-panel|contents)">.*?</div>', " ", page)
    parts = re.split(r"(?is)<h([1-6])\b[^>]*>(.*?)</h\1>", page)
    return [(int(parts[i]), html_text(parts[i + 1]), html_text(parts[i + 2])) for i in range(1, len(parts), 3)]


def texinfo_faq(page):
    """R-FAQ.html: numbered section headings ("7.31 Why ...?") are questions; chapters ("7 R
    Miscellanea") are categories. -> [(number, question, answer)]"""
    out = []
    for level, head, text in html_heading_sections(page):
        m = re.match(r"(\d+(?:\.\d+)+)\s+(.*)", head)
        if m:
            out.append((m.group(1), m.group(2), text))
    return out


def fetchmail_faq(page):
    """fetchmail-FAQ.html: <h2> "F1. Why ...?" headings are questions; deeper headings belong to
    the answer. -> [(label, question, answer)]"""
    out = []
    for level, head, text in html_heading_sections(page):
        m = re.match(r"([A-Z]\d+)\.\s+(.*)", head)
        if level == 2 and m:
            out.append([m.group(1), m.group(2), text])
        elif level > 2 and out and out[-1] is not None:
            out[-1][2] += " " + head + " " + text
        else:
            out.append(None)  # a category or other section ends the current answer
    return [tuple(x) for x in out if x is not None]


def sqlite_faq(page):
    """sqlite faq.html: <p><b>(N) question</b></p><blockquote>answer</blockquote>."""
    items = re.findall(r'(?s)<a name="q(\d+)"></a>\s*<p><b>(.*?)</b></p>(.*?)(?=<a name="q\d+"></a>|</ol>)', page)
    return [(n, html_text(q), html_text(a)) for n, q, a in items]


# ---------------------------------------------------------------- plain text (zsh, curl, procmail, screen, lftp)

def text_faq(text, question_re, stop_re=None):
    """Plain-text FAQ -> [(label, question, answer)]. A question starts at a line matching
    question_re (group 'label' optional) and runs to the first blank line or 'A:' line; its answer
    runs to the next question or a line matching stop_re (a chapter heading)."""
    items, current = [], None
    for line in text.split("\n"):
        m = re.match(question_re, line)
        if m:
            label = m.groupdict().get("label") or str(len(items) + 1)
            current = [label, [line], [], True]   # label, question lines, answer lines, in question
            items.append(current)
        elif stop_re and re.match(stop_re, line):
            current = None
        elif current is not None:
            if current[3] and (not line.strip() or line.startswith("A:")):
                current[3] = False
            (current[1] if current[3] else current[2]).append(line)
    return [(label, " ".join(" ".join(q).split()), re.sub(r"^A:\s*", "", " ".join(" ".join(a).split())))
            for label, q, a, _ in items]


ZSH_QUESTION = r"(?P<label>\d+\.\d+): \S"                   # "3.1: Why does ..." (the contents use "3.1.")
CURL_QUESTION = r"  (?P<label>\d+\.\d+(?:\.\d+)?) \S"        # "  4.5.1 Why ...", the contents repeat it
PROCMAIL_QUESTION = r"(?P<label>\d+)\. \S"                  # "19. How can I make procmail ..."
QA_QUESTION = r"Q:"                                         # screen, lftp: "Q: ..." then "A: ..."


def read_text_file(path):
    if not path.is_file():
        sys.exit(f"{path}: not found in the unpacked package (a different package version?)")
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", errors="replace")


def faq_sources(roots):
    """-> {source: [(doc_id, question, answer)]} in file order, questions not yet cleaned."""
    perl = roots["perl-doc"]
    pods = perl / "usr/share/perl/5.36.0/pod"
    src = {"perl": [], "R": [], "zsh": [], "git": [], "sqlite": [], "fetchmail": [], "screen": [],
           "procmail": [], "lftp": [], "curl": []}
    for name in PERL_FAQS:
        src["perl"] += [(f"{name}#{slug(q)}", q, a) for q, a in perl_faq(read_text_file(pods / f"{name}.pod"))]
    for name in PERL_MODULE_FAQS:
        page = read_text_file(perl / f"usr/share/man/man3/{name}.3perl.gz")
        src["perl"] += [(f"{name}#{slug(q)}", q, a) for q, a in roff_faq(page, POD2MAN_QUESTION)]
    r_faq = read_text_file(roots["r-doc-html"] / "usr/share/doc/r-doc-html/manual/R-FAQ.html")
    src["R"] = [(f"R-FAQ#{n}", q, a) for n, q, a in texinfo_faq(r_faq)]
    zsh = read_text_file(roots["zsh-common"] / "usr/share/doc/zsh-common/FAQ.gz")
    src["zsh"] = [(f"zsh#{n}", q, a) for n, q, a in text_faq(zsh, ZSH_QUESTION, r"Chapter \d+:")]
    git = read_text_file(roots["git-man"] / "usr/share/man/man7/gitfaq.7.gz")
    src["git"] = [(f"gitfaq#{slug(q)}", q, a) for q, a in roff_faq(git, GITFAQ_QUESTION)]
    sqlite = read_text_file(roots["sqlite3-doc"] / "usr/share/doc/sqlite3/faq.html")
    src["sqlite"] = [(f"sqlite-faq#q{n}", q, a) for n, q, a in sqlite_faq(sqlite)]
    fm = read_text_file(roots["fetchmail"] / "usr/share/doc/fetchmail/fetchmail-FAQ.html")
    src["fetchmail"] = [(f"fetchmail#{n}", q, a) for n, q, a in fetchmail_faq(fm)]
    screen = read_text_file(roots["screen"] / "usr/share/doc/screen/FAQ.gz")
    src["screen"] = [(f"screen#q{n}", q, a) for n, q, a in text_faq(screen, QA_QUESTION)]
    procmail = read_text_file(roots["procmail"] / "usr/share/doc/procmail/FAQ")
    src["procmail"] = [(f"procmail#{n}", q, a) for n, q, a in text_faq(procmail, PROCMAIL_QUESTION)]
    lftp = read_text_file(roots["lftp"] / "usr/share/doc/lftp/FAQ")
    src["lftp"] = [(f"lftp#q{n}", q, a) for n, q, a in text_faq(lftp, QA_QUESTION)]
    curl = read_text_file(roots["libcurl4-doc"] / "usr/share/doc/libcurl4/FAQ.gz")
    src["curl"] = [(f"curl#{n}", q, a) for n, q, a in text_faq(curl, CURL_QUESTION, r"\d+\. \S")]
    return src


def add_section(out, doc_id, text):
    """out[doc_id] = text; the same heading twice in one manual keeps both (doc_id-2, doc_id-3, ...)."""
    base, k = doc_id, 1
    while doc_id in out:
        k += 1
        doc_id = f"{base}-{k}"
    out[doc_id] = text


def faq_distractors(roots):
    """Manual sections of the same packages that are not FAQ answers: {doc_id: text}."""
    out = {}
    pods = roots["perl-doc"] / "usr/share/perl/5.36.0/pod"
    for name in PERL_MANUALS:
        for _, head, text in pod_sections(read_text_file(pods / f"{name}.pod"), ("head1", "head2", "head3", "item")):
            add_section(out, f"{name}#{slug(head)}", text)
    manual = roots["r-doc-html"] / "usr/share/doc/r-doc-html/manual"
    for name in R_MANUALS:
        for _, head, text in html_heading_sections(read_text_file(manual / f"{name}.html")):
            add_section(out, f"{name}#{slug(head)}", text)
    for path in sorted((roots["sqlite3-doc"] / "usr/share/doc/sqlite3").glob("*.html")):
        if path.name not in SQLITE_SKIP and not path.is_symlink():
            for _, head, text in html_heading_sections(read_text_file(path)):
                add_section(out, f"sqlite-{path.stem}#{slug(head)}", text)
    return {d: t for d, t in out.items() if len(t.split()) >= 20}


def faq_records(name, sources, prefix, need_question_mark=False):
    """{source: [(doc_id, question, answer)]} -> (corpus, queries, qrels): each question cleaned,
    its answer the one relevant document (grade 2, title empty). Prints the questions per source."""
    corpus, queries, qrels, counts = {}, {}, {}, {}
    for source, items in sources.items():
        counts[source] = 0
        for doc_id, question, answer in items:
            question = clean_question(question)
            # category headings and empty contents entries have no answer of their own
            if len(answer.split()) < 5 or len(question.split()) < 2:
                continue
            if need_question_mark and "?" not in question:
                continue  # a section title ("Web sites that carry nano."), not a question
            qid = query_id(prefix, question)
            if qid in queries:
                continue  # the same question twice: keep the first
            while doc_id in corpus:
                doc_id += "~"
            corpus[doc_id] = {"title": "", "text": words(answer)}
            queries[qid], qrels[qid] = question, {doc_id: 2}
            counts[source] += 1
    print(f"{name}: questions per source: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    return corpus, queries, qrels


def add_distractors(corpus, distractors, n):
    """Add a fixed, hash-ordered subsample of n distractors {doc_id: text} (titles empty): it keeps
    the corpus at a few thousand documents."""
    for doc_id in sorted((d for d in distractors if d not in corpus), key=sha1)[:n]:
        corpus[doc_id] = {"title": "", "text": words(distractors[doc_id])}


def build_faqs(cache_dir, allow_other_versions=False, n_distractors=6000):
    debs = fetch(FAQ_PACKAGES, cache_dir, allow_other_versions)
    roots = {pkg: unpack(deb, cache_dir) for pkg, _, deb in debs}
    corpus, queries, qrels = faq_records("faqs", faq_sources(roots), "faq")
    add_distractors(corpus, faq_distractors(roots), n_distractors)
    # Leave-source-out: the held-out sources' questions and answers form faqs-heldout and never
    # enter faqs, so a model trained on faqs is measured on projects it has never read.
    held = {q for q, rel in qrels.items() if any(d.split("#")[0] in HELDOUT_FAQ_DOCS for d in rel)}
    held_docs = {d for q in held for d in qrels[q]}
    keep = {d: v for d, v in corpus.items() if d not in held_docs}
    write_dataset("faqs", keep, {q: t for q, t in queries.items() if q not in held},
                  split_qrels({q: r for q, r in qrels.items() if q not in held}, queries), sources_txt("faqs", debs))
    held_corpus = {d: corpus[d] for d in sorted(held_docs)}
    held_queries = {q: queries[q] for q in sorted(held)}
    held_qrels = {"dev": {q: qrels[q] for q in sorted(held)}}
    write_dataset("faqs-heldout", held_corpus, held_queries, held_qrels, sources_txt("faqs", debs))
    # the same questions, every answer cut to its first EQUAL_WORDS words: length tells nothing
    cut = {d: {**v, "text": words(v["text"], EQUAL_WORDS)} for d, v in held_corpus.items()}
    write_dataset(f"faqs-heldout-eq{EQUAL_WORDS}", cut, held_queries, held_qrels, sources_txt("faqs", debs))


# sources of faqs held out from training (doc-id prefixes: curl 88, zsh 60, gitfaq 20 questions)
HELDOUT_FAQ_DOCS = ("curl", "zsh", "gitfaq")
EQUAL_WORDS = 30


# ================================================================ more FAQs (faqs-more)

# FAQs of eleven further projects, none of them in faqs or faqs-heldout (and, as there, never
# Python's documentation nor the Debian project's own documents).
FAQ_MORE_PACKAGES = [
    ("vim-doc", "2:9.0.1378-2+deb12u2"), ("cvs", "2:1.12.13+real-28+deb12u1"), ("lsof", "4.95.0-1"),
    ("sendmail-doc", "8.17.1.9-2+deb12u2"), ("zlib1g-dev", "1:1.2.13.dfsg-1+deb12u1"), ("rxvt-unicode", "9.30-2+b4"),
    ("xterm", "379-1"), ("nano", "7.2-1+deb12u1"), ("ffmpeg-doc", "7:5.1.9-0+deb12u1"), ("mksh", "59c-28+deb12u1"),
    ("fish-common", "3.6.0-3.1+deb12u1"),
]
# HTML FAQs whose questions are headings: (source, package, file)
HEADING_FAQS = [
    ("xterm", "xterm", "usr/share/doc/xterm/xterm.faq.html"), ("nano", "nano", "usr/share/doc/nano/faq.html"),
    ("ffmpeg", "ffmpeg-doc", "usr/share/doc/ffmpeg/manual/faq.html"), ("mksh", "mksh", "usr/share/doc/mksh/FAQ.htm"),
    ("fish", "fish-common", "usr/share/doc/fish/faq.html"),
]
VIM_QUESTION = r"(?P<label>\d+\.\d+)\. \S"                  # "5.3. How do I ...?" (the index repeats it indented)
CVS_QUESTION = r"    (?P<label>\d+)\. \S"                   # "    3. How do I create a branch?" (numbered per category)
LSOF_QUESTION = r"(?P<label>\d+(?:\.\d+)+)\s+\S"             # "10.2.1\tWhy doesn't ...?" (unanswered in the contents)
ZLIB_QUESTION = r" ?(?P<label>\d+)\. \S"                    # " 9. Can zlib handle .zip archives?"
SENDMAIL_QUESTION = r"(?:Subject: | *)Q(?P<label>\d+(?:\.\d+)+) -- "  # "Q3.7 -- How do I ...?"
URXVT_QUESTION = r'^\\fI(.*)\\fR\n\.IX Subsection ".*"$'      # pod2man's =head3: an italic line and its index entry
# sendmail's "   Date: March 23, 1996" / "   Updated: May, 2001" / "   URL updated: ..." lines under a question
_SENDMAIL_DATE = r"(?m)^   [A-Z][A-Za-z ]*: [A-Z][a-z]+,? (?:\d{1,2}, )?\d{4}\s*$"
FFMPEG_SKIP = {"faq.html", "mailing-list-faq.html", "index.html"}    # FAQs; *-all.html repeat the others
FISH_SKIP = {"faq.html", "genindex.html", "search.html", "relnotes.html"}  # FAQ, indexes, release notes
_PERMALINK = r'(?s)<a class="(?:anchor|headerlink)[^"]*"[^>]*>.*?</a>'  # a heading's "# TOC" or "¶" link


def heading_faq(page):
    """HTML FAQ whose questions are headings (xterm, nano, ffmpeg, mksh, fish): a heading with a '?' is
    a question and its section's text the answer; other headings are categories. Permalink marks
    (texinfo's "# TOC", Sphinx's "¶") are dropped. -> [(question, answer)]"""
    page = re.sub(_PERMALINK, "", page)
    return [(head, text) for _, head, text in html_heading_sections(page) if "?" in head]


def cvs_faq(text):
    """cvs FAQ (a FAQ-O-Matic export): "    3. How do I ...?" under "Category: /..." lines; every
    answer's closing "Last modified: _6/13/1997_" is dropped. -> [(label, question, answer)]"""
    items = text_faq(text, CVS_QUESTION, r"  Category: | *_{20,}$")
    return [(n, q, re.sub(r"\s*Last modified: _[^_]*_$", "", a)) for n, q, a in items]


def sendmail_faq(text):
    """sendmail faq.txt: "Q3.7 -- How do I ...?" (or "Subject: Q4.3 -- ...") starts a question; its
    answer runs to a rule of underscores. Date lines are dropped. -> [(label, question, answer)]"""
    items = text_faq(re.sub(_SENDMAIL_DATE, "", text), SENDMAIL_QUESTION, r"\s*(?:_{10,}|sendmail\.org)\s*$")
    return [(n, re.sub(r"^.*?Q[\d.]+ -- ", "", q), a) for n, q, a in items]


def faq_more_sources(roots):
    """-> {source: [(doc_id, question, answer)]} in file order, questions not yet cleaned."""
    def read(pkg, path):
        return read_text_file(roots[pkg] / path)

    vim = read("vim-doc", "usr/share/doc/vim/FAQ.gz")
    src = {"vim": [(f"vim-faq#{n}", q, a) for n, q, a in text_faq(vim, VIM_QUESTION, r"SECTION \d+ - |=+$")]}
    cvs = read("cvs", "usr/share/doc/cvs/FAQ.gz")
    src["cvs"] = [(f"cvs-faq#{slug(q)}", q, a) for _, q, a in cvs_faq(cvs)]  # numbers restart per category
    lsof = read("lsof", "usr/share/doc/lsof/00FAQ.gz")
    src["lsof"] = [(f"lsof-faq#{n}", q, a) for n, q, a in text_faq(lsof, LSOF_QUESTION)]
    sendmail = read("sendmail-doc", "usr/share/doc/sendmail-doc/faq.txt.gz")
    src["sendmail"] = [(f"sendmail-faq#{n}", q, a) for n, q, a in sendmail_faq(sendmail)]
    zlib = read("zlib1g-dev", "usr/share/doc/zlib1g-dev/FAQ.gz")
    src["zlib"] = [(f"zlib-faq#{n}", q, a) for n, q, a in text_faq(zlib, ZLIB_QUESTION)]
    # urxvt(7) is the rxvt-unicode FAQ; a category (.SS) or chapter (.SH) ends an answer
    urxvt = read("rxvt-unicode", "usr/share/man/man7/urxvt.7.gz").replace(r"\*(C+", "C++")
    src["urxvt"] = [(f"urxvt-faq#{slug(q)}", q, a) for q, a in roff_faq(urxvt, URXVT_QUESTION, r"^\.S[HS].*$")]
    for name, pkg, path in HEADING_FAQS:
        src[name] = [(f"{name}-faq#{slug(q)}", q, a) for q, a in heading_faq(read(pkg, path))]
    return src


def faq_more_distractors(roots):
    """Manual sections of the same packages: ffmpeg's and nano's manuals (texinfo HTML) and fish's
    documentation (Sphinx HTML). -> {doc_id: text}"""
    out = {}
    manual = roots["ffmpeg-doc"] / "usr/share/doc/ffmpeg/manual"
    for path in sorted(manual.glob("*.html")):
        if path.name not in FFMPEG_SKIP and not path.name.endswith("-all.html"):
            for _, head, text in html_heading_sections(re.sub(_PERMALINK, "", read_text_file(path))):
                add_section(out, f"ffmpeg-{path.stem}#{slug(head)}", text)
    for _, head, text in html_heading_sections(read_text_file(roots["nano"] / "usr/share/doc/nano/nano.html")):
        add_section(out, f"nano-manual#{slug(head)}", text)
    fish = roots["fish-common"] / "usr/share/doc/fish"
    for path in sorted([*fish.glob("*.html"), *fish.glob("cmds/*.html")]):
        if path.name not in FISH_SKIP:
            for _, head, anchor, text in html_sections(read_text_file(path)):
                add_section(out, f"fish-{path.stem}#{anchor or slug(head)}", text)
    return {d: t for d, t in out.items() if len(t.split()) >= 20}


def build_faq_set(name, packages, sources, distractors, prefix, cache_dir, allow_other_versions, n_distractors):
    """A FAQ dataset from Debian packages: sources(roots) gives the questions and answers,
    distractors(roots) the other sections that make the corpus harder."""
    debs = fetch(packages, cache_dir, allow_other_versions)
    roots = {pkg: unpack(deb, cache_dir) for pkg, _, deb in debs}
    # only questions with a '?': these FAQs also number section titles and hold problem statements
    corpus, queries, qrels = faq_records(name, sources(roots), prefix, need_question_mark=True)
    add_distractors(corpus, distractors(roots), n_distractors)
    write_dataset(name, corpus, queries, split_qrels(qrels, queries), sources_txt(name, debs))


def build_faqs_more(cache_dir, allow_other_versions=False, n_distractors=4000):
    build_faq_set("faqs-more", FAQ_MORE_PACKAGES, faq_more_sources, faq_more_distractors, "faqm",
                  cache_dir, allow_other_versions, n_distractors)


# ================================================================ still more FAQs (faqs-extra)

# FAQs of further projects, none of them in faqs, faqs-more or faqs-heldout (and, as there, never
# Python's documentation nor the Debian project's own documents).
FAQ_EXTRA_PACKAGES = [
    ("putty-doc", "0.78-2+deb12u2"), ("weechat-doc", "3.8-1"), ("privoxy", "3.0.34-1"),
    ("mplayer-doc", "2:1.5+svn38408-1"), ("cryptsetup", "2:2.6.1-4~deb12u2"), ("chrony", "4.3-2+deb12u3"),
    ("mc-data", "3:4.8.29-2"), ("slrn", "1.0.3+dfsg-6+b1"), ("dnsmasq-base", "2.90-4~deb12u2"),
    ("xz-utils", "5.4.1-1+deb12u2"), ("vsftpd", "3.0.3-13+b2"), ("w3m", "0.5.3+git20230121-2"),
    ("graphicsmagick", "1.4+really1.3.40-4+deb12u1"), ("doxygen-doc", "1.9.4-4"),
    ("python-lxml-doc", "4.9.2-1+deb12u1"), ("docutils-doc", "0.19+dfsg-6"),
    ("python-django-doc", "3:3.2.25-0+deb12u7"), ("python-sqlalchemy-doc", "1.4.46+ds1-1"),
    ("libmoose-perl", "2.2203-1"), ("libmojolicious-perl", "9.31+dfsg-1"), ("libtemplate-perl", "2.27-1+b5"),
]
# Where each package's HTML pages end: the footer, navigation bar or sidebar that follows the text
HTML_END = {
    "putty-doc": r"<hr><p>If you want to provide feedback", "weechat-doc": r'<div id="footer">',
    "privoxy": r'(?i)<div\s+class="navfooter"', "mplayer-doc": r'<div class="(?:footnotes|navfooter)">',
    "graphicsmagick": r'<p><a href="Copyright\.html">', "doxygen-doc": r"<!-- start footer part -->",
    "python-django-doc": r'<div class="yui-b" id="sidebar">',
    "python-sqlalchemy-doc": r'<div id="docs-bottom-navigation"',
    "debian-faq": r'<div class="(?:footnotes|navfooter)">', "debian-reference-en": r'<div class="(?:footnotes|navfooter)">',
}
# HTML FAQs whose questions are headings: (source, package, file or glob)
HEADING_FAQS_EXTRA = [
    ("putty", "putty-doc", "usr/share/doc/putty-doc/AppendixA.html"),
    ("weechat", "weechat-doc", "usr/share/doc/weechat-doc/html/weechat_faq.en.html"),
    ("privoxy", "privoxy", "usr/share/doc/privoxy/faq/*.html"),
    ("graphicsmagick", "graphicsmagick", "usr/share/doc/graphicsmagick/www/FAQ.html"),
    ("doxygen", "doxygen-doc", "usr/share/doc/doxygen/html/faq.html"),
    ("lxml", "python-lxml-doc", "usr/share/doc/python-lxml/html/FAQ.html"),
    ("docutils", "docutils-doc", "usr/share/doc/docutils-doc/FAQ.html"),
    ("django", "python-django-doc", "usr/share/doc/python-django-doc/html/faq/*.html"),
    ("sqlalchemy", "python-sqlalchemy-doc", "usr/share/doc/python-sqlalchemy-doc/html/faq/*.html"),
]
# POD FAQs of Perl modules (not perl-doc): (package, file); a heading with a '?' is a question
PERL_MODULE_POD_FAQS = [
    ("libmoose-perl", "usr/lib/x86_64-linux-gnu/perl5/5.36/Moose/Manual/FAQ.pod"),
    ("libmojolicious-perl", "usr/share/doc/libmojolicious-perl/Guides/FAQ.pod"),
    ("libtemplate-perl", "usr/lib/x86_64-linux-gnu/perl5/5.36/Template/FAQ.pod"),
]
CHRONY_QUESTION = r"(?P<label>\d+\.\d+)\. \S"                  # "2.2. How do I make an NTP server?"
MC_QUESTION = r"(?P<label>\d+\.\d+) \S"                         # "3.1 How do I enable mouse support?"
LINUXDOC_QUESTION = r"  (?P<label>\d+(?:\.\d+)+)\.  \S"          # "  3.2.1.  How can I never mark ...?"
CRYPTSETUP_QUESTION = r"  \* \*\*(?P<label>\d+\.\d+) "            # "  * **2.3 How do I set up encrypted swap?**"


def html_page(pkg, text):
    """A package's HTML page, ready for html_heading_sections: cut at its footer (HTML_END), closing
    tags written over two lines ("</H3\\n>", DocBook's style) joined, permalink marks dropped."""
    m = re.search(HTML_END.get(pkg, r"(?!)"), text)
    text = re.sub(r"</(\w+)\s+>", r"</\1>", text[:m.start()] if m else text)
    return re.sub(_PERMALINK, "", text)


def plain(text):
    """Drop the marks asciidoctor leaves in WeeChat's text: the external-link arrow ("support page ↗")
    and zero-width spaces; whitespace collapsed."""
    return " ".join(re.sub(r"\s*\u2197|\u200b", "", text).split())


def markdown_text(text):
    """Markdown -> plain text: '**bold**' -> 'bold', '`code`' -> 'code', '[text](url)' -> 'text';
    code fences (```) and HTML anchors (<a name="x"></a>) vanish."""
    text = re.sub(r"```\w*", " ", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"</?a\b[^>]*>", "", text)
    return " ".join(text.replace("**", "").replace("`", "").split())


def cryptsetup_faq(text):
    """cryptsetup FAQ.md: "  * **2.3 How do I set up encrypted swap?**" starts a question (its answer
    sometimes on the very next line); "# 3. Common Problems" is a chapter. -> [(label, question, answer)]"""
    text = re.sub(r"(?m)^(  \* \*\*.*\*\*)[ \t]*$", r"\1\n", text)  # a blank line ends every question
    items = text_faq(text, CRYPTSETUP_QUESTION, r"# ")
    return [(n, markdown_text(q).lstrip("* "), markdown_text(a)) for n, q, a in items]


def linuxdoc_faq(text):
    """A FAQ written with linuxdoc-tools (slrn): "  1.1.  What is slrn ?"; chapters read "  1.  General
    questions". The space linuxdoc leaves after an emphasised word ("slrn ?", "slrn 's") is dropped.
    -> [(label, question, answer)]"""
    def fix(s):
        return re.sub(r"(\w) (\?|'s\b)", r"\1\2", s)
    return [(n, fix(q), fix(a)) for n, q, a in text_faq(dehyphenate(text), LINUXDOC_QUESTION, r"  \d+\.  \S")]


def dehyphenate(text):
    """Join the words a formatter broke at a line's end: "expres-\\n  sions" -> "expressions" where the
    joined word occurs elsewhere in the text, else the hyphen stays ("slrn-\\n  announce" -> "slrn-announce")."""
    known = set(re.findall(r"[a-z]+", text.lower()))

    def join(m):
        word = m.group(1) + m.group(2)
        return word if word.lower() in known else f"{m.group(1)}-{m.group(2)}"
    return re.sub(r"(\w+)-\n\s*([a-z]\w*)", join, text)


def vsftpd_faq(text):
    """vsftpd FAQ: "Q) Help! Can I change the port?" then "A) Yes. ..." on the next line; a second
    answer reads "A2) ...". The "Help! " in front of many questions is dropped. -> [(question, answer)]"""
    items = re.findall(r"(?ms)^Q\) (.*?)\nA\d*\) (.*?)(?=^Q\) |\Z)", text)
    return [(re.sub(r"^Help! ", "", " ".join(q.split())), " ".join(re.sub(r"(?m)^A\d+\) ", "", a).split()))
            for q, a in items]


def docbook_qanda(page):
    """DocBook's qandaset (mplayer faq.html): table rows <tr class="question"> with "Q: ...", each
    followed by a <tr class="answer"> with "A: ..."; other rows (qandadiv titles, contents) end an
    answer, and footnote marks are dropped. -> [(question, answer)]"""
    page = re.sub(r'<sup class="footnote">.*?</sup>', "", page)  # "corrupted[3]"
    parts = re.split(r'<tr class="(\w+)">', page)
    out = []
    for cls, chunk in zip(parts[1::2], parts[2::2]):
        if cls == "question":
            out.append([html_text(chunk), ""])
        elif cls == "answer" and out and not out[-1][1]:
            out[-1][1] = re.sub(r"^A:\s*", "", html_text(chunk))
    return [(q, a) for q, a in out]


def dl_faq(page):
    """HTML FAQ as definition lists (w3m): <dt>question</dt><dd>answer</dd>. -> [(question, answer)]"""
    page = re.sub(r"(?s)<!--.*?-->", " ", page)
    return [(html_text(q), html_text(a)) for q, a in re.findall(r"(?is)<dt>(.*?)</dt>\s*<dd>(.*?)</dd>", page)]


def faq_extra_sources(roots):
    """-> {source: [(doc_id, question, answer)]} in file order, questions not yet cleaned."""
    def read(pkg, path):
        return read_text_file(roots[pkg] / path)

    src = {}
    for name, pkg, pattern in HEADING_FAQS_EXTRA:
        paths = sorted(roots[pkg].glob(pattern)) if "*" in pattern else [roots[pkg] / pattern]
        if not paths:
            sys.exit(f"{roots[pkg] / pattern}: not found in the unpacked package (a different package version?)")
        src[name] = []
        for path in paths:
            for q, a in heading_faq(html_page(pkg, read_text_file(path))):
                q = re.sub(r"^[A-Z]\.(?=\d)", "", plain(q))  # PuTTY's "A.2.1 Does ...?" -> "2.1 Does ...?"
                src[name].append((f"{name}-faq#{slug(q)}", q, plain(a)))
    mplayer = html_page("mplayer-doc", read("mplayer-doc", "usr/share/doc/mplayer/HTML/en/faq.html"))
    src["mplayer"] = [(f"mplayer-faq#{slug(q)}", q, a) for q, a in docbook_qanda(mplayer)]
    crypt = read("cryptsetup", "usr/share/doc/cryptsetup/FAQ.md.gz")
    src["cryptsetup"] = [(f"cryptsetup-faq#{n}", q, a) for n, q, a in cryptsetup_faq(crypt)]
    chrony = read("chrony", "usr/share/doc/chrony/FAQ.gz")
    src["chrony"] = [(f"chrony-faq#{n}", q, a)
                     for n, q, a in text_faq(chrony, CHRONY_QUESTION, r"\d+\. \S|Last updated \d{4}-")]
    mc = read("mc-data", "usr/share/doc/mc-data/FAQ.gz")  # chapters: "1 Getting started" ("\f2 Keyboard")
    src["mc"] = [(f"mc-faq#{n}", q, a) for n, q, a in text_faq(mc, MC_QUESTION, r"\f?\d+ \S")]
    slrn = read("slrn", "usr/share/doc/slrn/FAQ.gz")
    src["slrn"] = [(f"slrn-faq#{n}", q, a) for n, q, a in linuxdoc_faq(slrn)]
    dnsmasq = read("dnsmasq-base", "usr/share/doc/dnsmasq-base/FAQ.gz")
    src["dnsmasq"] = [(f"dnsmasq-faq#q{n}", q, a) for n, q, a in text_faq(dnsmasq, QA_QUESTION)]
    xz = read("xz-utils", "usr/share/doc/xz-utils/faq.txt.gz")
    src["xz"] = [(f"xz-faq#q{n}", q, a) for n, q, a in text_faq(xz, QA_QUESTION)]
    vsftpd = read("vsftpd", "usr/share/doc/vsftpd/FAQ.gz")
    src["vsftpd"] = [(f"vsftpd-faq#{slug(q)}", q, a) for q, a in vsftpd_faq(vsftpd)]
    w3m = read("w3m", "usr/share/doc/w3m/FAQ.html")
    src["w3m"] = [(f"w3m-faq#{slug(q)}", q, a) for q, a in dl_faq(w3m)]
    src["perl-modules"] = []
    for pkg, path in PERL_MODULE_POD_FAQS:
        pod = read(pkg, path).split("\n=cut")[0]  # what follows =cut is not POD (editor settings)
        src["perl-modules"] += [(f"{pkg}-faq#{slug(head)}", head, text)
                                for _, head, text in pod_sections(pod, ("head1", "head2", "head3")) if "?" in head]
    return src


# manual pages of the same packages, the distractors: (name, package, folder, globs, files skipped)
MANUALS_EXTRA = [
    ("putty", "putty-doc", "usr/share/doc/putty-doc", ("Chapter*.html", "Appendix*.html"), {"AppendixA.html"}),
    ("weechat", "weechat-doc", "usr/share/doc/weechat-doc/html",
     ("weechat_user.en.html", "weechat_quickstart.en.html", "weechat_scripting.en.html"), set()),
    ("privoxy", "privoxy", "usr/share/doc/privoxy/user-manual", ("*.html",), {"index.html", "whatsnew.html"}),
    ("mplayer", "mplayer-doc", "usr/share/doc/mplayer/HTML/en", ("*.html",), {"faq.html", "index.html"}),
    ("lxml", "python-lxml-doc", "usr/share/doc/python-lxml/html", ("*.html",),
     {"FAQ.html", "index.html", "sitemap.html", "credits.html", "changes-4.9.2.html"}),
    ("django", "python-django-doc", "usr/share/doc/python-django-doc/html/topics", ("**/*.html",), {"index.html"}),
]


def faq_extra_distractors(roots):
    """Manual sections of the same packages (MANUALS_EXTRA: the PuTTY manual, WeeChat's user guide,
    Privoxy's user manual, MPlayer's documentation, lxml's pages, Django's topic guides) and the
    Mojolicious guides. -> {doc_id: text}"""
    out = {}
    for name, pkg, folder, globs, skip in MANUALS_EXTRA:
        base = roots[pkg] / folder
        for path in sorted({p for g in globs for p in base.glob(g)}):
            if path.name in skip or path.is_symlink():
                continue
            page = html_page(pkg, read_text_file(path))
            for _, head, text in html_heading_sections(page):
                add_section(out, f"{name}-{path.relative_to(base).with_suffix('')}#{slug(head)}", plain(text))
    guides = roots["libmojolicious-perl"] / "usr/share/doc/libmojolicious-perl/Guides"
    for path in sorted(guides.glob("*.pod")):
        if path.name != "FAQ.pod":
            for _, head, text in pod_sections(read_text_file(path), ("head1", "head2", "head3")):
                add_section(out, f"mojolicious-{path.stem}#{slug(head)}", text)
    return {d: t for d, t in out.items() if len(t.split()) >= 20}


def build_faqs_extra(cache_dir, allow_other_versions=False, n_distractors=4000):
    build_faq_set("faqs-extra", FAQ_EXTRA_PACKAGES, faq_extra_sources, faq_extra_distractors, "faqx",
                  cache_dir, allow_other_versions, n_distractors)


# ================================================================ many projects' FAQs (faqs-wide)

# The English FAQs in Markdown, reStructuredText or plain text that Debian 12 ships outside the sets
# above: files named *faq* in the archive's Contents index, kept where the parsers below find at
# least three questions. data/faqs_wide.tsv pins each package, its version and the FAQ's path. Three
# generic parsers read them all, where the sets above have one parser a source: some answers keep
# a little markup, in exchange for about 160 projects. Left out, as everywhere: the held-out FAQs
# (zsh, git, curl), Python's and the Debian project's own documents (and Debian-specific FAQs such
# as debian-java-faq), the packages the sets above read, and any question that is also a question
# of an evaluation set (pyfaq, faqs-heldout, debian-faq).
FAQS_WIDE_LIST = ROOT / "faqs_wide.tsv"
EVALUATION_SETS = ("pyfaq", "faqs-heldout", "debian-faq")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>:._])\1{2,}\s*$")  # an rst heading's underline (or overline)
_RULE = re.compile(r"^\s*([-=_*~#])\1{3,}\s*$")               # a plain-text rule: "-----", "=====", "____"
_ENGLISH = set("the a an of to and in is it you that for be this with on are can not or if as by do i "
               "your from at".split())


def faqs_wide_list(path=FAQS_WIDE_LIST):
    """data/faqs_wide.tsv -> [(package, version, path of the FAQ in the package)]; '#' lines are comments."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            fields = line.split("\t")
            if len(fields) != 3:
                sys.exit(f"{path}:{n}: expected 3 tab-separated fields (package, version, path), got {len(fields)}")
            rows.append(tuple(fields))
    return rows


def rst_text(text):
    """reStructuredText -> plain text: roles (:ref:`text <target>`), links (`text <url>`_), literals
    (``code``), substitutions (|name|) and emphasis reduced to their words; directive lines (.. note::,
    .. _target: url), field lists (:param x:) and rules dropped, and with them the bodies of the
    directives that hold no prose (spelling, toctree, only, index, contents)."""
    text = re.sub(r"(?m)^\.\. (?:spelling(?:word-list)?|toctree|only|index|contents)::.*\n(?:[ \t]+.*\n|[ \t]*\n)*",
                  "", text)
    text = re.sub(r"(?m)^\s*\.\. .*$", " ", text)
    text = re.sub(r"(?m)^\s*:[\w -]+:(?=\s|$).*$", " ", text)  # a field, not a role (":ref:`x`" has a backtick)
    text = re.sub(r":[\w:+-]+:`([^`<]*?)\s*(?:<[^>]*>)?`", r"\1", text)
    text = re.sub(r"`([^`<]*?)\s*<[^>]*>`__?", r"\1", text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"`([^`]*)`_{0,2}", r"\1", text)
    text = re.sub(r"\|([\w -]+)\|", r"\1", text)
    text = re.sub(r"\b(\w+)__?(?=[\s.,;:)]|$)", r"\1", text)  # a named link: "Django_"
    text = re.sub(r"\*\*([^*]*)\*\*", r"\1", text)
    text = re.sub(r"(?m)^\s*([=\-~^*+#])\1{3,}\s*$", " ", text)
    return " ".join(text.replace("::", ":").split())


def rst_sections(text):
    """reStructuredText -> [(heading, text)]: a heading is an unindented line underlined by a run of
    one punctuation character at least as long (an overline, if any, is dropped with it)."""
    lines = text.split("\n")
    heads = [i for i in range(len(lines) - 1)
             if lines[i].strip() and not lines[i].startswith(" ") and not _UNDERLINE.match(lines[i])
             and _UNDERLINE.match(lines[i + 1]) and len(lines[i + 1].rstrip()) >= len(lines[i].rstrip())]
    out = []
    for k, i in enumerate(heads):
        end = heads[k + 1] if k + 1 < len(heads) else len(lines)
        if k + 1 < len(heads) and end - 1 > i + 1 and _UNDERLINE.match(lines[end - 1]):
            end -= 1  # the next heading's overline
        out.append((lines[i].strip(), rst_text("\n".join(lines[i + 2:end]))))
    return out


def md_sections(text):
    """Markdown -> [(heading, text)]: '#' headings, underlined (=== / ---) headings and lines that
    are one bold question ('**How do I ...?**'); nothing inside a code fence is a heading."""
    lines = text.split("\n")
    heads, fenced = [], False  # heads: (line, heading, lines it takes)
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        atx = re.match(r"^#{1,6}\s+(.*?)[\s#]*$", line)
        if atx:
            heads.append((i, atx.group(1), 1))
        elif (i + 1 < len(lines) and line.strip() and not line.startswith(" ")
              and re.match(r"^(?:={3,}|-{3,})\s*$", lines[i + 1])):
            heads.append((i, line.strip(), 2))
        elif re.match(r"^\s*(?:[-*]\s+)?\*\*.+\?\*\*\s*$", line):
            heads.append((i, line.strip(" -*"), 1))
    out = []
    for k, (i, head, taken) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        out.append((markdown_text(head), markdown_text("\n".join(lines[i + taken:end]))))
    return out


_LABEL = r"(?:Q(?:uestion)?\s*\d*\s*[:.)]|\d+(?:\.\d+)*[a-z]?(?:[.):]|\.-)?|[-*o])"  # "Q1 :", "3.2", "2e.", "4)", "7.-", "*"


def text_sections(text):
    """Plain-text FAQ -> [(question, answer)]. A question is a paragraph after a blank line or a rule
    ("-----") that ends with '?' and has at most 30 words: one line (a label such as "3.2" or "Q:"
    optional, indented at most 4 spaces), or up to three lines, the first of them labelled. Its
    answer is everything up to the next question; rules are dropped."""
    lines = [line for line in text.split("\n")]
    out, i = [], 0
    while i < len(lines):
        starts = i == 0 or not lines[i - 1].strip() or _RULE.match(lines[i - 1])
        para = []
        if starts and re.match(r"^\s{0,4}\S", lines[i]) and not _RULE.match(lines[i]):
            for j in range(i, min(i + 3, len(lines))):
                if not lines[j].strip() or _RULE.match(lines[j]):
                    break
                para.append(lines[j])
                if lines[j].rstrip().endswith("?"):
                    break
        question = " ".join(" ".join(para).split())
        one_line = len(para) == 1
        if (para and question.endswith("?") and len(question.split()) <= 30
                and (one_line or re.match(rf"^\s*{_LABEL}\s", para[0]))):
            out.append([question, []])
            i += len(para)
            continue
        if out and not _RULE.match(lines[i]):
            out[-1][1].append(lines[i])
        i += 1
    return [(q, " ".join(" ".join(a).split())) for q, a in out]


def english(text):
    """Mostly ASCII, with English function words among its words (drops the translated FAQs)."""
    found = re.findall(r"[A-Za-z']+", text.lower())
    return (len(found) >= 3 and sum(w in _ENGLISH for w in found) >= 0.12 * len(found)
            and sum(c.isascii() for c in text) >= 0.9 * len(text))


def faq_heading(text):
    """A question without its marks: anchors (<a name="x"/>, {#Q021}), rst roles and literals,
    heading rules ("== Q =="), quotes, escapes ("\\?") and labels ("Q1 :", "[Q] -", "<11>", "[G.3]",
    "2e.", "4)", "7.-", "10.Is", "> ")."""
    text = re.sub(r"<a\b[^>]*>|</a>|\{#[^}]*\}", "", text, flags=re.I)
    text = rst_text(text).replace("\\", "")
    label = rf"[=*#:>\s]+|\[Q\]\s*-?\s*|<\d+>\s*|\[[A-Z]?\.?\d+(?:\.\d+)*\]\s*|{_LABEL}\s+|\d+\.(?=[A-Z])"
    text = re.sub(rf"^(?:{label})+|[=*#\s]+$", "", text)
    return text[1:-1] if len(text) > 2 and text[0] == text[-1] == '"' else text


def generic_faq(path, text):
    """One FAQ file, by its format (.rst/.rst.txt, .md/.md.txt/.markdown, anything else plain text)
    -> [(question, answer)]: headings with a '?', English, 2-40 words a question, 5 words or more an
    answer. A heading that continues its parent's ("…run the latest version?") is left out; so are
    answers' "A:" labels, HTML line breaks and key lines ("%%%% Q:key", crawl's FAQ)."""
    name = path.name.lower().removesuffix(".gz").removesuffix(".txt")
    if name.endswith(".rst"):
        sections = rst_sections(text)
    elif name.endswith((".md", ".markdown")):
        sections = md_sections(text)
    else:
        sections = text_sections(re.sub(r"(?m)^%%%%.*$", "", text))
    out = []
    for question, answer in sections:
        question = faq_heading(question)
        answer = re.sub(r"<br\s*/?>", " ", answer, flags=re.I)
        answer = re.sub(r"^(?:A(?:nswer)?\s*\d*[:.]\s+|A\d+\s+|\[A\]\s*-?\s*|-{1,3}\s+)|\s+-{3,}$", "", answer)
        if ("?" in question and not question.startswith(("…", "...")) and 2 <= len(question.split()) <= 40
                and len(answer.split()) >= 5 and english(question + " " + answer)):
            out.append((question, " ".join(answer.split())))
    return out


def faqs_wide_sources(roots, entries):
    """-> {package: [(doc_id, question, answer)]}; doc ids are PACKAGE#question, PACKAGE-2#question
    for a package's second FAQ file."""
    src, files = {}, {}
    for pkg, _, path in entries:
        files[pkg] = files.get(pkg, 0) + 1
        page = pkg if files[pkg] == 1 else f"{pkg}-{files[pkg]}"
        text = read_text_file(roots[pkg] / path)
        src.setdefault(pkg, []).extend((f"{page}#{slug(q)}", q, a) for q, a in generic_faq(Path(path), text))
    return src


def evaluation_questions(names=EVALUATION_SETS):
    """The normalised questions of the evaluation sets (built before faqs-wide), which it leaves out."""
    out = set()
    for name in names:
        path = ROOT / "beir" / name / "queries.jsonl"
        if not path.is_file():
            sys.exit(f"{path}: not built. faqs-wide leaves out the questions of {', '.join(names)}: build "
                     f"them first (python data/build_datasets.py --only {'faqs' if name == 'faqs-heldout' else name})")
        out |= {norm_text(json.loads(line)["text"]) for line in path.read_text(encoding="utf-8").splitlines()}
    return out


def copyright_licence(root, pkg):
    """The first 'License:' of a package's machine-readable copyright file, or a pointer to the file."""
    path = root / "usr/share/doc" / pkg / "copyright"
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    m = re.search(r"(?m)^License:\s*(\S.*)$", text)
    return m.group(1).strip() if m else f"see usr/share/doc/{pkg}/copyright"


def build_faqs_wide(cache_dir, allow_other_versions=False):
    held_out = evaluation_questions()
    entries = faqs_wide_list()
    packages = sorted({(pkg, version) for pkg, version, _ in entries})
    debs = fetch(packages, cache_dir, allow_other_versions)
    roots = {pkg: unpack(deb, cache_dir) for pkg, _, deb in debs}
    sources = {pkg: [(d, q, a) for d, q, a in items if norm_text(clean_question(q)) not in held_out]
               for pkg, items in faqs_wide_sources(roots, entries).items()}
    corpus, queries, qrels = faq_records("faqs-wide", sources, "faqw", need_question_mark=True)
    licences = "\n".join(f"  {pkg}: {copyright_licence(roots[pkg], pkg)}" for pkg, _ in packages)
    write_dataset("faqs-wide", corpus, queries, split_qrels(qrels, queries),
                  sources_txt("faqs-wide", debs) + "licences (the first License: of each copyright file):\n"
                  + licences + "\n")


# ================================================================ the Debian FAQ (debian-faq): the test set

# The Debian project's own documents, which no training set reads: the FAQ's questions against
# its answers and sections of the Debian Reference. Every judgement is a test judgement.
DEBIAN_PACKAGES = [("debian-faq", "11.1"), ("debian-reference-en", "2.100")]
DEBIAN_FAQ_DIR = "usr/share/doc/debian/FAQ"            # one page a chapter: basic-defs.en.html, ...
DEBIAN_REFERENCE_DIR = "usr/share/debian-reference"    # pr01, ch01-ch12, apa .en.html
_DOCBOOK_TOC = r'(?s)<div class="toc">.*?</div>'       # a chapter's table of contents (no nested divs)


def docbook_page(pkg, text):
    """A DocBook chapter page (the Debian FAQ, the Debian Reference), ready for html_heading_sections:
    cut at its footnotes and navigation footer (HTML_END), its table of contents and footnote marks
    ("[1]") dropped."""
    text = re.sub(_DOCBOOK_TOC, " ", html_page(pkg, text))
    return re.sub(r'<sup class="footnote">.*?</sup>', "", text)


def docbook_faq(page):
    """A DocBook FAQ whose questions are section headings (the Debian FAQ: <h2 class="title"><a
    id="whatisdebian"></a>1.2. What is Debian GNU/Linux?</h2>). A heading with a '?' is a question;
    its answer is its section's text and that of the subsections that are not questions ("8.1.1.
    dpkg" under "8.1. What programs does Debian provide ...?"), up to the next heading of its level
    or above. -> [(question, answer)]"""
    out, enclosing = [], []  # enclosing: (level, index in out) of the questions whose section we are in
    for level, head, text in html_heading_sections(page):
        while enclosing and enclosing[-1][0] >= level:
            enclosing.pop()
        if "?" in head:
            enclosing.append((level, len(out)))
            out.append([head, text])
        elif enclosing:
            answer = out[enclosing[-1][1]]
            answer[1] = " ".join([answer[1], clean_question(head), text]).strip()
    return [(q, a) for q, a in out]


def debian_reference_sections(root):
    """Every section of the Debian Reference's English HTML (the contents page skipped). -> {doc_id: text}"""
    out = {}
    for path in sorted((root / DEBIAN_REFERENCE_DIR).glob("*.en.html")):
        if path.name != "index.en.html":
            for _, head, text in html_heading_sections(docbook_page("debian-reference-en", read_text_file(path))):
                add_section(out, f"debian-reference-{path.name.split('.')[0]}#{slug(head)}", text)
    return {d: t for d, t in out.items() if len(t.split()) >= 20}


def build_debian_faq(cache_dir, allow_other_versions=False, n_distractors=1500):
    debs = fetch(DEBIAN_PACKAGES, cache_dir, allow_other_versions)
    roots = {pkg: unpack(deb, cache_dir) for pkg, _, deb in debs}
    faq = roots["debian-faq"] / DEBIAN_FAQ_DIR
    pages = [p for p in sorted(faq.glob("*.en.html")) if p.name != "index.en.html"]  # index: title page, contents
    if not pages:
        sys.exit(f"{faq}: no *.en.html pages in the unpacked package (a different package version?)")
    sources = {"debian-faq": [(f"debian-faq#{slug(q)}", q, a) for path in pages
                              for q, a in docbook_faq(docbook_page("debian-faq", read_text_file(path)))]}
    corpus, queries, qrels = faq_records("debian-faq", sources, "debfaq", need_question_mark=True)
    add_distractors(corpus, debian_reference_sections(roots["debian-reference-en"]), n_distractors)
    judged = {"test": qrels}  # the test set: no train or dev split, nothing is trained or tuned on it
    write_dataset("debian-faq", corpus, queries, judged, sources_txt("debian-faq", debs))
    # the same, every document cut to its first EQUAL_WORDS words: length tells nothing
    cut = {d: {**v, "text": words(v["text"], EQUAL_WORDS)} for d, v in corpus.items()}
    write_dataset(f"debian-faq-eq{EQUAL_WORDS}", cut, queries, judged, sources_txt("debian-faq", debs))


# ================================================================ CLI

BUILDERS = {"manpages": build_manpages, "foldoc": build_foldoc, "pyfaq": build_pyfaq, "faqs": build_faqs,
            "faqs-more": build_faqs_more, "faqs-extra": build_faqs_extra, "debian-faq": build_debian_faq,
            "faqs-wide": build_faqs_wide}  # faqs-wide last: it leaves out the evaluation sets' questions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", choices=sorted(BUILDERS), help="build just this dataset")
    p.add_argument("--cache-dir", default=str(CACHE), help="downloaded .debs and unpacked trees (default: data/cache)")
    p.add_argument("--allow-other-versions", action="store_true",
                   help="if a pinned package version is gone from the archive, use the current one")
    return p.parse_args(argv)


def main(args):
    for name in [args.only] if args.only else list(BUILDERS):
        t0 = time.time()
        BUILDERS[name](Path(args.cache_dir), args.allow_other_versions)
        print(f"{name}: built in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main(parse_args())
