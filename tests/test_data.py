"""Dataset building blocks on tiny inline fixtures: roff and HTML parsing, the FAQ parsers (POD,
roff, HTML, plain text), the BEIR loader's error messages, BM25 against a hand computation,
candidate mining with its near-duplicate filter, the SFT dataset mix and stable splits."""
import json
import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import build_datasets as bd  # noqa: E402
from data.beir import DataFormatError, load_corpus, load_qrels, load_queries, read_trec_run  # noqa: E402
from data.bm25 import BM25, mine_candidates, tokenize  # noqa: E402

LS_PAGE = r'''.\" Copyright and other comments are dropped
.de XX
.B this macro body never shows
..
.TH LS 1 "2022" "GNU coreutils 9.1" "User Commands"
.ie \n(.g .ds Aq \(aq
.el .ds Aq '
.SH NAME
ls \- list directory contents
.SH SYNOPSIS
.B ls
[\fI\,OPTION\/\fR]... [\fI\,FILE\/\fR]...
.SH DESCRIPTION
.\" a comment line
List information about the FILEs \(em the current directory by default.
ls lists directory contents.
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries starting with \fB.\fP and it\*(Aqs fine
.SH "SEE ALSO"
.BR dir (1),
.BR stat (2)
'''


def test_roff_parser_strips_macros_and_escapes():
    name, section, sections = bd.parse_roff(LS_PAGE)
    assert (name, section) == ("LS", "1")
    heads = dict(sections)
    assert list(heads) == ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"], list(heads)
    assert heads["NAME"] == "ls - list directory contents"
    assert heads["DESCRIPTION"] == ("List information about the FILEs \u2014 the current directory by default. "
                                    "ls lists directory contents. -a, --all do not ignore entries starting "
                                    "with . and it's fine"), heads["DESCRIPTION"]
    assert heads["SEE ALSO"] == "dir(1), stat(2)"
    assert "macro body" not in " ".join(heads.values())


def test_man_page_record_drops_the_repeated_one_liner():
    one_liner, body, see_also = bd.man_page_record(bd.parse_roff(LS_PAGE)[2])
    assert one_liner == "list directory contents"
    assert body.startswith("List information about the FILEs") and "lists directory contents" not in body, body
    assert see_also == "dir(1), stat(2)"


def test_mdoc_page_name_and_flags():
    page = ".Dd May 1 2023\n.Dt SSH 1\n.Os\n.Sh NAME\n.Nm ssh\n.Nd OpenSSH remote login client\n" \
           ".Sh DESCRIPTION\n.Nm\nconnects with\n.Fl v\nand reads\n.Xr ssh_config 5 .\n"
    sections = dict(bd.parse_roff(page)[2])
    assert sections["NAME"] == "ssh - OpenSSH remote login client"
    assert sections["DESCRIPTION"] == "ssh connects with -v and reads ssh_config(5)."


def test_html_sections_split_by_heading_without_permalink_marks():
    page = ('<html><body><div class="sphinxsidebar">Navigation</div>'
            '<div class="body" role="main"><section id="faq"><h1>FAQ<a class="headerlink" href="#faq">\u00b6</a></h1>'
            '<nav class="contents"><p>Contents</p></nav>'
            '<section id="how"><h3>How do I copy an object?<a class="headerlink" href="#how-copy">\u00b6</a></h3>'
            '<p>Use <code>copy.copy()</code> for a shallow copy.</p><pre>x = y[:]</pre></section>'
            '</section></div><div class="footer">Copyright</div></body></html>')
    sections = bd.html_sections(page)
    assert [(lvl, head, anchor) for lvl, head, anchor, _ in sections] == \
        [(0, "", ""), (1, "FAQ", "faq"), (3, "How do I copy an object?", "how-copy")]
    assert sections[1][3] == ""  # the contents box is skipped
    assert sections[2][3] == "Use copy.copy() for a shallow copy. x = y[:]"


def test_foldoc_entries_aliases_and_masking():
    body = "abstract data type\nADT\n\n   <programming> (ADT) A kind of {data abstraction}.  More text.\n\n   (2003-07-03)\n"
    data = body.encode()
    index = f"ADT\tA\t{bd._B64[len(data) // 64]}{bd._B64[len(data) % 64]}\n" \
            f"abstract data type\tA\t{bd._B64[len(data) // 64]}{bd._B64[len(data) % 64]}\n"
    entries = bd.parse_foldoc(index, data)
    assert list(entries) == ["abstract data type"]
    aliases, text = entries["abstract data type"]
    assert aliases == ["abstract data type", "ADT"]
    assert text.startswith("<programming> (ADT) A kind of {data abstraction}.")
    assert bd.mask("The ADT and an Abstract Data Type, not ADTs", aliases) == "The ___ and an ___, not ADTs"


def test_splits_are_stable_and_follow_the_query_text():
    assert bd.split_of("list directory contents") == bd.split_of("List directory contents.")
    counts = {"train": 0, "dev": 0, "test": 0}
    for i in range(2000):
        counts[bd.split_of(f"query number {i}")] += 1
    assert 1500 < counts["train"] < 1700 and 120 < counts["dev"] < 280 and 120 < counts["test"] < 280, counts
    assert bd.query_id("man", "list directory contents") == bd.query_id("man", "list  directory contents")


# ---------------------------------------------------------------- BEIR loader

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_loader_reads_a_valid_dataset(tmp_path):
    write(tmp_path / "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n{"_id": "d2", "text": "y"}\n')
    write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "x?"}\n')
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\n")
    assert load_corpus(tmp_path) == {"d1": {"title": "T", "text": "x"}, "d2": {"title": "", "text": "y"}}
    assert load_queries(tmp_path) == {"q1": "x?"}
    assert load_qrels(tmp_path, "test") == {"q1": {"d1": 2}}


@pytest.mark.parametrize("content, message", [
    ('{"_id": "d1", "text": "x"}\n{"_id": "d2"}\n', "corpus.jsonl, line 2: field 'text' is missing"),
    ('{"_id": "d1", "text": 3}\n', "corpus.jsonl, line 1: field 'text' should be a string"),
    ('{"_id": "d1", "text": "x"}\n\n{"_id": "d1", "text": "y"}\n', "corpus.jsonl, line 3: field '_id': duplicate"),
    ('{"_id": "d1", "text": "x"\n', "corpus.jsonl, line 1: not valid JSON"),
])
def test_loader_errors_name_file_line_and_field(tmp_path, content, message):
    write(tmp_path / "corpus.jsonl", content)
    with pytest.raises(DataFormatError, match=message.replace("(", r"\(")):
        load_corpus(tmp_path)


def test_qrels_and_run_errors_name_the_field(tmp_path):
    write(tmp_path / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(DataFormatError, match=r"dev.tsv, line 2: field 'score' should be an integer"):
        load_qrels(tmp_path, "dev")
    with pytest.raises(FileNotFoundError, match="splits present: dev"):
        load_qrels(tmp_path, "test")
    write(tmp_path / "run.trec", "q1 Q0 d1 1 0.5 bm25\nq1 Q0 d2 2 abc bm25\n")
    with pytest.raises(DataFormatError, match=r"run.trec, line 2: field 'score'"):
        read_trec_run(tmp_path / "run.trec")


# ---------------------------------------------------------------- BM25

def test_tokenizer_lowercases_drops_stopwords_and_plurals():
    assert tokenize("The Libraries, of C-Programs: gas buses") == ["library", "c", "program", "ga", "buse"]


def test_bm25_matches_hand_computed_score():
    corpus = {"a": {"title": "", "text": "cat cat dog"}, "b": {"title": "", "text": "dog bird"},
              "c": {"title": "", "text": "fish"}}
    bm = BM25.from_corpus(corpus)  # k1 0.9, b 0.4
    n, avgdl, k1, b = 3, 2.0, 0.9, 0.4
    idf_cat = math.log(1 + (n - 1 + 0.5) / (1 + 0.5))
    idf_dog = math.log(1 + (n - 2 + 0.5) / (2 + 0.5))
    norm_a = k1 * (1 - b + b * 3 / avgdl)
    expected_a = idf_cat * 2 * (k1 + 1) / (2 + norm_a) + idf_dog * 1 * (k1 + 1) / (1 + norm_a)
    norm_b = k1 * (1 - b + b * 2 / avgdl)
    expected_b = idf_dog * (k1 + 1) / (1 + norm_b)
    hits = bm.search("cats and dogs", k=10)
    assert [d for d, _ in hits] == ["a", "b"]  # "c" matches nothing and is not returned
    assert hits[0][1] == pytest.approx(expected_a, abs=1e-12) and hits[1][1] == pytest.approx(expected_b, abs=1e-12)


def test_bm25_index_cache_round_trip(tmp_path):
    lines = [json.dumps({"_id": f"d{i}", "title": "", "text": f"word{i} common"}) for i in range(5)]
    write(tmp_path / "ds" / "corpus.jsonl", "\n".join(lines) + "\n")
    first = BM25.from_dir(tmp_path / "ds", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    second = BM25.from_dir(tmp_path / "ds", cache_dir=tmp_path / "cache")
    assert first.search("word3 common", 3) == second.search("word3 common", 3)


def test_mine_candidates_injects_positive_and_respects_buckets():
    # 1,200 documents; d0000 has the query word most often, so BM25 ranks follow the index
    corpus = {f"d{i:04d}": {"title": "", "text": "apple " * max(1, 60 - i // 20) + f"filler{i}"} for i in range(1200)}
    corpus["gold"] = {"title": "", "text": "banana"}  # never retrieved for "apple"
    bm = BM25.from_corpus(corpus)
    ranked = [d for d, _ in bm.search("apple", k=1000)]
    qrels = {"q": {"gold": 2, ranked[3]: 1, ranked[50]: 0}}
    out = mine_candidates(bm, {"q": "apple"}, qrels, n_hard=4, n_medium=3, n_easy=2, seed=7, progress=False)
    assert len(out) == 1 and out[0]["pos"] == [("gold", 2), (ranked[3], 1)]
    rank = {d: i + 1 for i, d in enumerate(ranked)}
    buckets = {"hard": (1, 10), "medium": (11, 100), "easy": (101, 1000)}
    assert [b for _, b in out[0]["neg"]] == ["hard"] * 4 + ["medium"] * 3 + ["easy"] * 2
    for d, bucket in out[0]["neg"]:
        lo, hi = buckets[bucket]
        assert lo <= rank[d] <= hi and d not in ("gold", ranked[3]), (d, rank[d], bucket)
    again = mine_candidates(bm, {"q": "apple"}, qrels, n_hard=4, n_medium=3, n_easy=2, seed=7, progress=False)
    assert again == out  # same seed, same candidates


def test_near_duplicate_negative_is_dropped_counted_and_replaced():
    # two hard-bucket candidates: "copy" repeats the positive's text, "other" does not
    text = "use the rsync command to copy files between two hosts over ssh quickly"
    corpus = {"gold": {"title": "", "text": text}, "copy": {"title": "", "text": text + " apple"},
              "other": {"title": "", "text": "apple pie recipes with cinnamon and brown sugar for the autumn"}}
    bm = BM25.from_corpus(corpus)
    texts = {d: corpus[d]["text"] for d in corpus}
    qrels = {"q": {"gold": 2}}
    both = mine_candidates(bm, {"q": "apple"}, qrels, n_hard=2, n_medium=0, n_easy=0, seed=0, progress=False,
                           texts=texts)
    assert both[0]["neg"] == [("other", "hard")] and both[0]["dropped"]["hard"] == 1, both[0]
    unfiltered = mine_candidates(bm, {"q": "apple"}, qrels, n_hard=2, n_medium=0, n_easy=0, seed=0, progress=False)
    assert sorted(d for d, _ in unfiltered[0]["neg"]) == ["copy", "other"]


def test_near_duplicate_uses_word_5gram_jaccard():
    from data.bm25 import near_duplicate
    a = "one two three four five six seven eight nine ten"
    assert near_duplicate(a, a) and near_duplicate(a, a + " eleven")       # 6 of 7 shingles shared
    assert not near_duplicate(a, "ten nine eight seven six five four three two one")


# ---------------------------------------------------------------- FAQ parsers (faqs dataset)

PERL_POD = """=head1 NAME

perlfaqX - a sample

=head1 Data: Strings

=head2 How do I reverse a string?

Use C<reverse()> in scalar context, see L<perlfunc/reverse> and
L<the docs|perlop>: E<lt>stringE<gt> becomes C<< $a <=> $b >>.

    my $r = reverse $s;

=head2 How do I expand tabs in a string?

You can use L<Text::Tabs>X<tabs>.
"""


def test_perl_faq_questions_and_clean_pod_answers():
    items = bd.perl_faq(PERL_POD)
    assert [q for q, _ in items] == ["How do I reverse a string?", "How do I expand tabs in a string?"]
    assert items[0][1] == ("Use reverse() in scalar context, see perlfunc/reverse and the docs: <string> "
                           "becomes $a <=> $b. my $r = reverse $s;"), items[0][1]
    assert items[1][1] == "You can use Text::Tabs."


def test_roff_faq_gitfaq_items_and_pod2man_headings():
    git = ('.SH "CONFIGURATION"\n.PP\nWhat should I put in \\fBuser\\&.name\\fR?\n.RS 4\n'
           'You should put your personal name\\&.\n.sp\nSee \\fBgit-config\\fR(1)\\&.\n.RE\n'
           '.SH "SEE ALSO"\ngit(1)\n')
    assert bd.roff_faq(git, bd.GITFAQ_QUESTION) == [
        ("What should I put in user.name?", "You should put your personal name. See git-config(1).")]
    pod2man = ('.SH "Using Net::FTP"\n.SS "How do I get a listing from an \\s-1FTP\\s0 server ?"\n'
               'Use the \\f(CW\\*(C`ls\\*(C\'\\fR method.\n.SS "Categories"\n.IP "Why not make?" 4\n'
               '.IX Item "Why not make?"\nBecause it is old.\n.IP "\\(bu" 8\nbullet\n.SH "AUTHOR"\nme\n')
    items = bd.roff_faq(pod2man, bd.POD2MAN_QUESTION)
    assert items == [("How do I get a listing from an FTP server ?", 'Use the "ls" method.'),
                     ("Categories", ""), ("Why not make?", "Because it is old. \u2022 bullet")], items


def test_html_faqs_texinfo_fetchmail_and_sqlite():
    texinfo = ('<div class="header"><p>Next: <a href="#x">Intro</a></p></div>'
               '<h2 class="chapter">7 R Miscellanea</h2><p>Chapter intro.</p>'
               '<h3 class="section">7.31 Why does <code>plot</code> &amp; co fail?</h3><p>Because <em>x</em>.</p>')
    assert bd.texinfo_faq(texinfo) == [("7.31", "Why does plot & co fail?", "Because x.")]
    fetchmail = ('<!-- <h1> in a comment --><h2 id="C_G">General problems</h2><p>toc</p>'
                 '<h2><a id="F1" name="F1">F1. Why does my old\nfile fail?</a></h2><p>It changed.</p>'
                 '<h3>If your file predates 6.4.0</h3><p>Edit it.</p><h1>Other</h1><p>not an answer</p>')
    assert bd.fetchmail_faq(fetchmail) == [("F1", "Why does my old file fail?",
                                            "It changed. If your file predates 6.4.0 Edit it.")]
    sqlite = ('<ol><li><a href="#q1">toc</a></li></ol><a name="q1"></a>\n<p><b>(1) How do I create an '
              'AUTOINCREMENT field?</b></p>\n<blockquote><p>Use <a href="x">INTEGER PRIMARY KEY</a>.</p>'
              '</blockquote></li>\n</ol><p>footer</p>')
    assert bd.sqlite_faq(sqlite) == [("1", "(1) How do I create an AUTOINCREMENT field?", "Use INTEGER PRIMARY KEY.")]


def test_text_faqs_numbered_chapters_and_q_a_blocks():
    zsh = ("Chapter 3:  How to get things to work\n3.1. Why does it fail?\n\nChapter 3:  How to\n\n"
           "3.1: Why does `$var' not split?\n\n  Because zsh does not split\n  words.\n\n"
           "3.2: In which startup file do I put...?\n\n  In .zshrc.\n")
    assert bd.text_faq(zsh, bd.ZSH_QUESTION, r"Chapter \d+:") == [
        ("3.1", "3.1: Why does `$var' not split?", "Because zsh does not split words."),
        ("3.2", "3.2: In which startup file do I put...?", "In .zshrc.")]
    screen = "  header\n\nQ:   Why is it  impossible\n     to download?\n \nA:   Screen always\n     interprets it.\n"
    assert bd.text_faq(screen, bd.QA_QUESTION) == [("1", "Q: Why is it impossible to download?",
                                                    "Screen always interprets it.")]
    procmail = "----\n1. How do I set up a list?\n   Or an archive?\n\n\tLook in SmartList.\n"
    assert bd.text_faq(procmail, bd.PROCMAIL_QUESTION) == [("1", "1. How do I set up a list? Or an archive?",
                                                            "Look in SmartList.")]


# ---------------------------------------------------------------- FAQ parsers (faqs-more dataset)

def test_heading_faq_keeps_headings_with_a_question_mark_without_permalinks():
    ffmpeg = ('<h2 class="chapter">3 Usage<span class="pull-right"><a class="anchor hidden-xs" href="#U">#</a> '
              '<a class="anchor hidden-xs"href="#toc-U">TOC</a></span></h2>'
              '<h3 class="section">3.7 Why can I not change the frame rate?<span class="pull-right">'
              '<a class="anchor hidden-xs" href="#W">#</a></span></h3><p>Some codecs only allow a few.</p>'
              '<h3 class="section">3.6 -f jpeg doesn&rsquo;t work.</h3><p>Try image2.</p>')
    assert bd.heading_faq(ffmpeg) == [("3.7 Why can I not change the frame rate?", "Some codecs only allow a few.")]
    fish = ('<h2>How do I set my prompt?<a class="headerlink" href="#p" title="Permalink">\u00b6</a></h2>'
            '<p>Use <code>fish_prompt</code>.</p><h2>Uninstalling fish\u00b6</h2><p>Remove it.</p>')
    assert bd.heading_faq(fish) == [("How do I set my prompt?", "Use fish_prompt.")]


def test_text_faqs_vim_lsof_zlib_skip_their_indexes():
    vim = ("INDEX\n\nSECTION 1 - GENERAL\n    1.1. What is Vim?\n    1.2. Who wrote\n         Vim?\n\n=====\n\n"
           "SECTION 1 - GENERAL\n\n\n1.1. What is Vim?\n\nVim is an editor.\n\n1.2. Who wrote\n     Vim?\n\n"
           "Bram.\n\n\n=====\n\nSECTION 2 - RESOURCES\n")
    assert bd.text_faq(vim, bd.VIM_QUESTION, r"SECTION \d+ - |=+$") == [
        ("1.1", "1.1. What is Vim?", "Vim is an editor."), ("1.2", "1.2. Who wrote Vim?", "Bram.")]
    lsof = ("Table of Contents:\n\n1.0\tGeneral Concepts\n1.1\tLsof -- what is it?\n1.2.4\tWhy can't I get\n"
            "\tthe sum?\n\n1.0\tGeneral Concepts\n\n1.2.4\tWhy can't I get\n\tthe sum?\n\n\tUse cksum -o1.\n")
    items = bd.text_faq(lsof, bd.LSOF_QUESTION)
    assert [(n, q, a) for n, q, a in items if a] == [("1.2.4", "1.2.4 Why can't I get the sum?", "Use cksum -o1.")]
    zlib = (" 4. compress() returns Z_BUF_ERROR.\n\n    Make sure it is not\n    zero.\n\n"
            " 5. Is zlib thread-safe?\n\n    Yes.\n")
    assert bd.text_faq(zlib, bd.ZLIB_QUESTION) == [
        ("4", "4. compress() returns Z_BUF_ERROR.", "Make sure it is not zero."),
        ("5", "5. Is zlib thread-safe?", "Yes.")]


def test_cvs_and_sendmail_faqs_drop_their_stamps():
    cvs = ("  Category: /Branching/\n\n    1. What is a branch?\n    \n   A parallel line.\n   \n"
           "   Last modified: _6/13/1997_\n   \n    2. How do I merge\n   \n  Category: /Other/\n"
           "    1. Why (or when) would I\n    want a branch?\n    \n   Rarely.\n   Last modified: _6/13/1997_\n")
    assert bd.cvs_faq(cvs) == [("1", "1. What is a branch?", "A parallel line."), ("2", "2. How do I merge", ""),
                               ("1", "1. Why (or when) would I want a branch?", "Rarely.")]
    sendmail = ("Q2.9 -- Where can I find it?\n\n   Date: January 21, 1997\n   Updated: May, 2001\n\n"
                "   By anonymous FTP.\n     ____________________\n\nsection text\n"
                "Subject: Q4.3 -- How can I deliver to $HOME/.mail\ninstead?\n\n   URL updated: July 27, 1999\n\n"
                "   Use procmail.\n\n   sendmail.org\n\n      5. VENDOR ISSUES\n")
    assert bd.sendmail_faq(sendmail) == [("2.9", "Where can I find it?", "By anonymous FTP."),
                                         ("4.3", "How can I deliver to $HOME/.mail instead?", "Use procmail.")]


def test_roff_faq_urxvt_italic_questions_end_at_categories():
    urxvt = ('.SH "FAQ"\n.SS "Meta Issues"\n.IX Subsection "Meta Issues"\n\\fIHow do I know the version?\\fR\n'
             '.IX Subsection "How do I know the version?"\n.PP\nUse \\f(CW\\-h\\fR.\n.SS "Keyboard"\n'
             '.IX Subsection "Keyboard"\n\\fIWhy is my key weird?\\fR\n.IX Subsection "Why is my key weird?"\n.PP\n'
             'Because.\n.SH "REFERENCE"\ntext\n')
    assert bd.roff_faq(urxvt, bd.URXVT_QUESTION, r"^\.S[HS].*$") == [
        ("How do I know the version?", "Use -h."), ("Why is my key weird?", "Because.")]


def test_faq_records_can_keep_only_questions(capsys):
    sources = {"a": [("a#1", "1.1. How do I quit?", "Type :q and press Enter."),
                     ("a#2", "2.1. Web sites that carry it.", "ftp.example.org and others carry it."),
                     ("a#3", "3.1. How do I quit?", "A repeated question keeps the first answer.")]}
    corpus, queries, qrels = bd.faq_records("demo", sources, "t", need_question_mark=True)
    assert list(queries.values()) == ["How do I quit?"] and list(corpus) == ["a#1"]
    assert qrels == {bd.query_id("t", "How do I quit?"): {"a#1": 2}}
    assert "demo: questions per source: a 1" in capsys.readouterr().out


@pytest.mark.parametrize("raw, clean", [
    ("3.14: Why does `foo' fail?", "Why does `foo' fail?"), ("Q:   Why is it  slow?", "Why is it slow?"),
    ("(12) What is SQLite?", "What is SQLite?"), ("F1. Why?  ", "Why?"), ("7.31 Why?", "Why?"),
    ("1.5 What is 3.14 here?", "What is 3.14 here?"), ("How do I sort?", "How do I sort?"),
])
def test_clean_question_drops_numbering(raw, clean):
    assert bd.clean_question(raw) == clean


# ---------------------------------------------------------------- FAQ parsers (faqs-extra dataset)

def test_html_page_cuts_the_footer_and_joins_docbook_closing_tags():
    privoxy = ('<H3\nCLASS="SECT2"\n><A\nNAME="X"\n>3.1. What is an <SPAN\nCLASS="QUOTE"\n>"actions"</SPAN\n> file?</A\n>'
               '</H3\n><P\n> A file of rules.</P\n><DIV\nCLASS="NAVFOOTER"\n><A HREF="x">Prev</A> Home Next</DIV\n>')
    assert bd.heading_faq(bd.html_page("privoxy", privoxy)) == [('3.1. What is an "actions" file?', "A file of rules.")]
    weechat = ('<h3 id="d"><a class="anchor" href="#d"></a>9.5. Can I give money\u200b?</h3><p>See the <a href="u">'
               'donation page <sup>\u2197</sup></a>.</p><div id="footer"><div id="footer-text">Version 3.8</div></div>')
    (q, a), = bd.heading_faq(bd.html_page("weechat-doc", weechat))
    assert (bd.plain(q), bd.plain(a)) == ("9.5. Can I give money?", "See the donation page.")


def test_markdown_and_cryptsetup_questions():
    assert bd.markdown_text('Run `wipefs -a`\n```\n  cat x\n```\nsee **[the tracker](https://x.org)**.') == \
        "Run wipefs -a cat x see the tracker."
    md = ("# 2. Setup\n\n\n  * **2.3 How do I set up encrypted swap?**\n\n  Use `cryptsetup` with a\n"
          "  **random** key.\n\n\n  * **6.16 How to convert the key?**\n  A key printed via:\n```\nxxd -r -p\n```\n\n"
          "# 7. Interoperability\n\n  intro\n")
    assert bd.cryptsetup_faq(md) == [("2.3", "2.3 How do I set up encrypted swap?", "Use cryptsetup with a random key."),
                                     ("6.16", "6.16 How to convert the key?", "A key printed via: xxd -r -p")]


def test_text_faqs_chrony_mc_and_linuxdoc_slrn():
    chrony = ("  o 2. Configuration issues\n      ? 2.2. How do I make an NTP server?\n\n2. Configuration issues\n\n"
              "2.2. How do I make an NTP server?\n\nAdd an allow directive.\n\n3. Computer is not synchronising\n\n"
              "Last updated 2022-08-29 15:04:33 +0200\n")
    assert bd.text_faq(chrony, bd.CHRONY_QUESTION, r"\d+\. \S|Last updated \d{4}-") == [
        ("2.2", "2.2. How do I make an NTP server?", "Add an allow directive.")]
    mc = ("     * 3 Mouse\n          + 3.1 How do I enable mouse support?\n\n\f3 Mouse\n\n3.1 How do I enable\n"
          "mouse support?\n\n   Invoke mc with -x.\n\n4 Display\n\n   chapter text\n")
    assert bd.text_faq(mc, bd.MC_QUESTION, r"\f?\d+ \S") == [
        ("3.1", "3.1 How do I enable mouse support?", "Invoke mc with -x.")]
    slrn = ("  4.  Scoring\n\n  4.5.  Where can I get a full description of slrn 's regular expres-\n  sions?\n\n"
            "  See the S-Lang docs; slrn 's scorefiles use\n  expressions and han-\n  dle e-\n  mail.\n\n"
            "  5.  slrnpull\n\n  text\n")
    assert bd.linuxdoc_faq(slrn) == [("4.5", "4.5. Where can I get a full description of slrn's regular expressions?",
                                      "See the S-Lang docs; slrn's scorefiles use expressions and han-dle e-mail.")]


def test_vsftpd_docbook_qanda_and_definition_list_faqs():
    vsftpd = ("vsftpd FAQ\n\nQ) Help! Does vsftpd support IPv6?\nA) Yes, as of version 1.2.0.\n\n"
              "Q) Help! Can I change the port?\nA1) Yes. Use listen_port.\nA2) Yes. Edit inetd.conf.\n")
    assert bd.vsftpd_faq(vsftpd) == [("Does vsftpd support IPv6?", "Yes, as of version 1.2.0."),
                                     ("Can I change the port?", "Yes. Use listen_port. Yes. Edit inetd.conf.")]
    mplayer = ('<tr class="toc"><td><dl><dt>Q: <a href="#q1">How do I join two files?</a></dt></dl></td></tr>'
               '<tr class="question"><td><p><b>Q:</b></p></td><td><p>\nHow do I join two\nfiles?\n</p></td></tr>'
               '<tr class="answer"><td><p><b>A:</b></p></td><td><p>Use <tt>cat</tt>, if it is not corrupted'
               '<a class="footnote"><sup class="footnote">[3]</sup></a>.</p></td></tr>'
               '<tr class="qandadiv"><td><h3>8.2. Other</h3></td></tr><tr class="question"><td>Q:</td><td>Why?</td></tr>')
    assert bd.docbook_qanda(mplayer) == [("Q: How do I join two files?", "Use cat, if it is not corrupted."),
                                         ("Q: Why?", "")]
    w3m = ('<ul><li><b>Index</b></li></ul><dl>\n <dt>\n  <b>How do I pronounce <q>w3m</q>?</b>\n </dt>\n <dd>\n'
           '  <p>It\'s W-three-M.</p><!-- <a href="x">binaries</a> !-->\n </dd>\n</dl>')
    assert bd.dl_faq(w3m) == [("How do I pronounce w3m?", "It's W-three-M.")]


def test_debian_faq_questions_keep_their_non_question_subsections():
    # the Debian FAQ's DocBook markup (debian-faq 11.1, pkgtools.en.html and support.en.html, shortened)
    page = ('<div class="navheader"><table><tr><th>Chapter 8. Tools</th></tr></table><hr /></div><div class="chapter">'
            '<div class="titlepage"><div><div><h1 class="title"><a id="pkgtools"></a>Chapter 8. The Debian package '
            'management tools</h1></div></div></div><div class="toc"><p><strong>Table of Contents</strong></p>'
            '<dl class="toc"><dt><span class="section"><a href="pkgtools.en.html#pkgprogs">8.1. What programs does '
            'Debian provide?</a></span></dt></dl></div><div class="section"><div class="titlepage"><div><div>'
            '<h2 class="title"><a id="pkgprogs"></a>8.1. What programs does Debian provide for managing its '
            'packages?</h2></div></div></div><p>\nThere are multiple tools.\n</p><div class="section"><div '
            'class="titlepage"><div><div><h3 class="title"><a id="dpkg"></a>8.1.1. dpkg</h3></div></div></div><p>\n'
            'This is the main <code class="literal">dpkg</code> program.<a href="#ftn.idm475" class="footnote" '
            'id="idm475"><sup class="footnote">[1]</sup></a>\n</p></div><div class="section"><div class="titlepage">'
            '<div><div><h4 class="title"><a id="coc"></a>8.1.1.1. What is the code of conduct?</h4></div></div></div>'
            '<p>Be polite.</p></div><h3 class="title"><a id="apt-get"></a>8.1.2. APT</h3><p>APT is the Advanced '
            'Package Tool.</p></div><div class="section"><div class="titlepage"><div><div><h2 class="title"><a '
            'id="authors"></a>8.2. Authors</h2></div></div></div><p>Many people.</p></div></div><div '
            'class="footnotes"><br /><hr /><div id="ftn.idm475" class="footnote"><p>[1] A footnote.</p></div></div>'
            '<div class="navfooter"><hr /><table><tr><td>Chapter 9. Keeping your Debian system up-to-date</td>'
            '</tr></table></div></body></html>')
    assert bd.docbook_faq(bd.docbook_page("debian-faq", page)) == [
        ("8.1. What programs does Debian provide for managing its packages?",
         "There are multiple tools. dpkg This is the main dpkg program. APT APT is the Advanced Package Tool."),
        ("8.1.1.1. What is the code of conduct?", "Be polite.")]
    assert bd.clean_question("8.1.1.1. What is the code of conduct?") == "What is the code of conduct?"


# ---------------------------------------------------------------- generic FAQ parsers (faqs-wide)

def test_rst_sections_headings_by_underline_and_markup_reduced():
    rst = ("=========\nBorg FAQ\n=========\n\n.. contents::\n\nUsage\n-----\n\nGeneral text.\n\n"
           "Can I back up VM disk images?\n~~~~~~~~~~~~~~~~~~~~~~~~~~~~~\n\nYes, see :ref:`the docs <vm>` and "
           "``borg create``,\n`the site <https://x.org>`_, |project| and **note**::\n\n    borg list\n\n"
           ".. _vm: https://x.org/vm\n\n------------\nWhy so slow?\n------------\nIt hashes.\n")
    assert bd.rst_sections(rst) == [("Borg FAQ", ""), ("Usage", "General text."),
                                     ("Can I back up VM disk images?",
                                      "Yes, see the docs and borg create, the site, project and note: borg list"),
                                     ("Why so slow?", "It hashes.")]
    # a line of text above a short rule is no heading (the rule is shorter than the line)
    assert bd.rst_sections("Is this a heading?\n---\nno\n") == []


def test_rst_text_keeps_lines_that_start_with_a_role_and_drops_prose_free_directives():
    # celery's FAQ: a line starting with a role is answer text; a field list and a spelling block are not
    rst = (":mod:`~celery.bin.worker` is an implementation of Celery in Python. If the\nlanguage has an AMQP client,"
           " it works.\n\n:param x: a field\n\n.. spelling::\n\n   csr\n   eos\n\nSee Django_ too.\n")
    assert bd.rst_text(rst) == ("~celery.bin.worker is an implementation of Celery in Python. If the language has "
                                "an AMQP client, it works. See Django too.")


def test_md_sections_atx_setext_and_bold_questions_not_code():
    md = ("# FAQ\n\n## How do I start?\n\nRun `tool` [here](http://x).\n\n```c\n#include <x.h>\n```\n\n"
          "Why is it red?\n---\nBecause.\n\n**Can I use *Net-SNMP*?**\nYes please.\n")
    assert bd.md_sections(md) == [("FAQ", ""), ("How do I start?", "Run tool here. #include <x.h>"),
                                  ("Why is it red?", "Because."), ("Can I use *Net-SNMP*?", "Yes please.")]


def test_text_sections_questions_after_a_blank_line_or_a_rule():
    text = ("Getmail FAQ\n\n1.2 What is a maildir?\n\n  A maildir is a format.\nIs it safe? Yes it is.\n\n"
            "Q: Can I use it?\nA: Yes, with care.\n\n        Indented deep, is this a question?\n    no.\n")
    assert bd.text_sections(text) == [
        ("1.2 What is a maildir?", "A maildir is a format. Is it safe? Yes it is."),
        ("Q: Can I use it?", "A: Yes, with care. Indented deep, is this a question? no.")]
    # UW IMAP's FAQ: a labelled question wrapped over two lines; pam_mount's: a question after a rule
    imap = ("1.1 Can I set up a POP or IMAP server on UNIX, Linux, or OSF/1?\n\n    Yes.\n\n"
            "1.2 I am currently using qpopper. Do I need to replace it with\n    ipop3d?\n\n    No.\n"
            "=====\nWhy are my volumes not unmounted?\n\nA logout hook is missing.\n\n"
            "An answer that ends its paragraph\nwith a question of its own?\n")
    assert bd.text_sections(imap) == [
        ("1.1 Can I set up a POP or IMAP server on UNIX, Linux, or OSF/1?", "Yes."),
        ("1.2 I am currently using qpopper. Do I need to replace it with ipop3d?", "No."),
        ("Why are my volumes not unmounted?",
         "A logout hook is missing. An answer that ends its paragraph with a question of its own?")]


@pytest.mark.parametrize("raw, clean", [
    ('<A name="func_mock"/> Q. Can I mock a C function API?', "Can I mock a C function API?"),
    ("Q1 : Compiling is really slow on MacOS X. Why? {#Q003}", "Compiling is really slow on MacOS X. Why?"),
    ("<11> How do I get a list of functions?", "How do I get a list of functions?"),
    ('[G.3] What is the "setslient" method?', 'What is the "setslient" method?'),
    ("Where can I use ``await``\\?", "Where can I use await?"),
    ("2e. How do I compile the game?", "How do I compile the game?"),
    ("4) What is a proxy used for?", "What is a proxy used for?"),
    ("7.- There are rooms, why?", "There are rooms, why?"),
    ("10.Is it recommended?", "Is it recommended?"),
    ("> Where can I get information?", "Where can I get information?"),
    ('"Why is it slow?"', "Why is it slow?"),
    ("== How do I quit? ==", "How do I quit?"),
    ("3D or 2D?", "3D or 2D?"),
])
def test_faq_heading_drops_labels_and_marks(raw, clean):
    assert bd.faq_heading(raw) == clean


def test_generic_faq_by_format_keeps_english_questions_only(tmp_path):
    md = ("## [Q] - Is it free?\n\n[A] - Yes, it is free for you to use<br> in any way. ---\n\n"
          "## Installation\n\nSee the README for all of the steps.\n\n## Why?\n\nToo short.\n\n"
          "## …run the latest source version?\n\nUse the git checkout of the project.\n\n"
          "## Wie installiere ich es?\n\nMit dem Paketmanager, der in der Distribution ist.\n")
    assert bd.generic_faq(tmp_path / "FAQ.md.gz", md) == [("Is it free?", "Yes, it is free for you to use in any way.")]
    text = "3.1 How do I quit?\n\nA: Press q and the program exits at once.\n"
    assert bd.generic_faq(tmp_path / "FAQ", text) == [("How do I quit?", "Press q and the program exits at once.")]
    rst = "How do I quit?\n==============\n\nPress ``q`` and the program exits.\n"
    assert bd.generic_faq(tmp_path / "faq.rst.txt", rst) == [("How do I quit?", "Press q and the program exits.")]
    assert not bd.english("Mit dem Paketmanager der Distribution, wie immer.")
    assert bd.english("Press q and the program exits at once.")


def test_faqs_wide_sources_name_a_packages_second_faq(tmp_path):
    faq = "## How do I quit the program?\n\nPress q and it exits at once.\n"
    for pkg, name, text in [("a", "FAQ.md", faq), ("a", "more/faq.md", faq.replace("quit", "start"))]:
        (tmp_path / pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / name).write_text(text)
    src = bd.faqs_wide_sources({"a": tmp_path / "a"}, [("a", "1", "FAQ.md"), ("a", "1", "more/faq.md")])
    assert src == {"a": [("a#How-do-I-quit-the-program", "How do I quit the program?", "Press q and it exits at once."),
                         ("a-2#How-do-I-start-the-program", "How do I start the program?",
                          "Press q and it exits at once.")]}


def test_faqs_wide_needs_the_evaluation_sets_and_leaves_their_questions_out(tmp_path, monkeypatch):
    monkeypatch.setattr(bd, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match=r"pyfaq/queries.jsonl: not built. faqs-wide leaves out the questions"):
        bd.evaluation_questions()
    (tmp_path / "beir" / "pyfaq").mkdir(parents=True)
    (tmp_path / "beir" / "pyfaq" / "queries.jsonl").write_text('{"_id": "q1", "text": "What is Python?"}\n')
    assert bd.evaluation_questions(("pyfaq",)) == {"what is python?"}


def test_faqs_wide_list_rows_and_errors(tmp_path):
    good = tmp_path / "ok.tsv"
    good.write_text("# comment\nzoneminder-doc\t1.36.33+dfsg1-1\tusr/share/doc/x/faq.rst.txt\n\n")
    assert bd.faqs_wide_list(good) == [("zoneminder-doc", "1.36.33+dfsg1-1", "usr/share/doc/x/faq.rst.txt")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("pkg 1.0 path\n")
    with pytest.raises(SystemExit, match=r"bad.tsv:1: expected 3 tab-separated fields"):
        bd.faqs_wide_list(bad)
    rows = bd.faqs_wide_list()  # the committed list: no held-out, Debian or already-read source
    used = {n for lst in (bd.FAQ_PACKAGES, bd.FAQ_MORE_PACKAGES, bd.FAQ_EXTRA_PACKAGES, bd.DEBIAN_PACKAGES,
                          bd.PYDOC_PACKAGES) for n, _ in lst}
    assert len(rows) > 150 and not {p for p, _, _ in rows} & used
    assert not [p for p, _, path in rows if re.search(r"debian|^apt|^dpkg|^python3\.\d+-doc$|/(zsh|git|curl)\b",
                                                      f"{p}:{path}", re.I)]


# ---------------------------------------------------------------- SFT mix

def test_dataset_spec_name_or_name_colon_cap():
    from data.make_sft import parse_dataset_spec
    assert parse_dataset_spec("faqs", 50) == ("faqs", 50)
    assert parse_dataset_spec("manpages:300", 50) == ("manpages", 300)
    with pytest.raises(SystemExit, match="NAME:N"):
        parse_dataset_spec("foldoc:many", 0)


def write_tiny_sets(tmp_path, sizes=(("alpha", 6), ("beta", 4))):
    for name, n in sizes:
        docs = [json.dumps({"_id": f"{name}{i}", "title": "", "text": f"topic{i} words about {name}"}) for i in range(n)]
        write(tmp_path / name / "corpus.jsonl", "\n".join(docs) + "\n")
        qs = [json.dumps({"_id": f"q{i}", "text": f"topic{i}"}) for i in range(n)]
        write(tmp_path / name / "queries.jsonl", "\n".join(qs) + "\n")
        write(tmp_path / name / "qrels" / "train.tsv",
              "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{name}{i}\t2\n" for i in range(n)))


def test_make_sft_on_a_missing_built_in_dataset_says_how_to_build_it(tmp_path):
    from data import make_sft
    write_tiny_sets(tmp_path)
    with pytest.raises(SystemExit) as e:
        make_sft.main(["--root", str(tmp_path), "--datasets", "alpha", "foldoc", "--out", str(tmp_path / "o.jsonl")])
    assert str(e.value) == (f"error: {tmp_path / 'foldoc'}: no such directory; it is a built-in dataset, build it "
                            "first with: python data/build_datasets.py --only foldoc")
    with pytest.raises(SystemExit, match="gamma: no such directory .expected a BEIR-format dataset"):
        make_sft.main(["--root", str(tmp_path), "--datasets", "gamma", "--out", str(tmp_path / "o.jsonl")])
    assert not (tmp_path / "o.jsonl").exists()


def test_mix_caps_train_queries_per_dataset(tmp_path, monkeypatch):
    from data import make_sft
    write_tiny_sets(tmp_path)
    monkeypatch.setattr(make_sft.BM25, "from_dir", lambda d: BM25.from_corpus(load_corpus(d)))
    out = tmp_path / "sft.jsonl"
    make_sft.main(["--root", str(tmp_path), "--datasets", "alpha:2", "beta", "--max-queries", "3",
                   "--n-hard", "1", "--n-medium", "0", "--out", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    queries = {(r["dataset"], r["qid"]) for r in recs}
    assert sum(d == "alpha" for d, _ in queries) == 2 and sum(d == "beta" for d, _ in queries) == 3, queries


def test_max_negatives_and_thinking_share(tmp_path, monkeypatch):
    from data import make_sft
    write_tiny_sets(tmp_path, (("alpha", 12),))
    qs = [json.dumps({"_id": f"q{i}", "text": f"topic{i} words about alpha"}) for i in range(12)]  # all docs match
    write(tmp_path / "alpha" / "queries.jsonl", "\n".join(qs) + "\n")
    monkeypatch.setattr(make_sft.BM25, "from_dir", lambda d: BM25.from_corpus(load_corpus(d)))
    out = tmp_path / "sft.jsonl"
    make_sft.main(["--root", str(tmp_path), "--datasets", "alpha", "--n-hard", "2", "--n-medium", "0",
                   "--max-negatives", "1", "--thinking-share", "0.5", "--out", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    per_query = {}
    for r in recs:
        per_query.setdefault(r["qid"], []).append(r["score"])
    assert all(sorted(v) == [0, 10] for v in per_query.values()), per_query  # the positive and one of two negatives
    thinking = [r for r in recs if "reasoning" in r]
    assert 0 < len(thinking) < len(recs) and all(r["reasoning"] == "" for r in thinking)


def test_leading_sentences_cut_at_the_sentence_end_nearest_the_words():
    from data.make_sft import leading_sentences
    text = "ls lists files. Entries are sorted. Long options need arguments too."  # ends after 3, 6, 11 words
    assert leading_sentences(text, 100) == text  # short enough already
    assert leading_sentences(text, 4) == "ls lists files."  # 3 is nearer 4 than 6 is
    assert leading_sentences(text, 5) == "ls lists files. Entries are sorted."  # 6 is nearer 5 than 3 is
    assert leading_sentences(text, 1) == "ls lists files."  # at least one sentence
    assert leading_sentences("Try this: run it now and see the result", 2) == "Try this: run it now and see the result"
    assert leading_sentences("See:\nthe list below. More.", 1) == "See:\nthe list below."  # ':' and line ends are not sentence ends


def test_match_length_cuts_negatives_to_the_positives_words(tmp_path, monkeypatch):
    from data import make_sft
    write_tiny_sets(tmp_path, (("alpha", 6),))
    long = " ".join(f"Sentence {k} about topic words." for k in range(20))  # 100 words of whole sentences
    docs = [{"_id": f"alpha{i}", "title": "" if i < 3 else "A title", "text": f"topic{i} is answered here by a short "
             "text of eleven words." if i < 3 else long + f" topic{i % 3}"} for i in range(6)]
    write(tmp_path / "alpha" / "corpus.jsonl", "\n".join(json.dumps(d) for d in docs) + "\n")
    write(tmp_path / "alpha" / "qrels" / "train.tsv",
          "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\talpha{i}\t2\n" for i in range(3)))
    monkeypatch.setattr(make_sft.BM25, "from_dir", lambda d: BM25.from_corpus(load_corpus(d)))
    runs = {}
    for flag in ([], ["--match-length"]):
        out = tmp_path / f"sft{len(flag)}.jsonl"
        make_sft.main(["--root", str(tmp_path), "--datasets", "alpha", "--n-hard", "3", "--n-medium", "0",
                       "--mapping", "binary", "--out", str(out)] + flag)
        runs[bool(flag)] = [json.loads(line) for line in out.read_text().splitlines()]
    for matched in (False, True):
        negs = [r["doc"] for r in runs[matched] if r["score"] == 0 and r["docid"] >= "alpha3"]
        assert negs and all(d.startswith("A title\n") for d in negs)  # the title is never cut
        words = [len(d.split("\n", 1)[1].split()) for d in negs]
        assert all(n == (10 if matched else 101) for n in words), (matched, words)
    assert [r["docid"] for r in runs[False]] == [r["docid"] for r in runs[True]]  # the same records, cut


def test_shared_length_other_answers_and_offtopic_negatives(tmp_path, monkeypatch):
    from data import make_sft
    sentences = lambda tag, n: " ".join(f"{tag} sentence {k} about topic words." for k in range(n))  # 6 words each
    for name, n in (("alpha", 8), ("beta", 5)):
        docs = [json.dumps({"_id": f"{name}{i}", "title": "", "text": f"topic{i} answer. " + sentences(name, 40)})
                for i in range(n)]
        write(tmp_path / name / "corpus.jsonl", "\n".join(docs) + "\n")
        write(tmp_path / name / "queries.jsonl", "\n".join(json.dumps({"_id": f"q{i}", "text": f"topic{i}"})
                                                           for i in range(n)) + "\n")
        write(tmp_path / name / "qrels" / "train.tsv",
              "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{name}{i}\t2\n" for i in range(n)))
    monkeypatch.setattr(make_sft.BM25, "from_dir", lambda d: BM25.from_corpus(load_corpus(d)))
    out = tmp_path / "sft.jsonl"
    make_sft.main(["--root", str(tmp_path), "--datasets", "alpha", "beta", "--n-hard", "1", "--n-medium", "0",
                   "--n-other", "1", "--n-offtopic", "1", "--shared-length", "5", "200", "--mapping", "binary",
                   "--out", str(out)])
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    by_query = {}
    for r in recs:
        by_query.setdefault((r["dataset"], r["qid"]), []).append(r)
    lengths = set()
    for (dataset, _), group in by_query.items():
        labels = sorted(r["label"] for r in group if r["label"] != "hard")  # BM25 may find no hard one here
        assert labels == ["grade2", "offtopic", "other"], labels
        other = next(r for r in group if r["label"] == "other")
        assert other["docid"].startswith(dataset) and other["docid"] != group[0]["docid"]  # another question's answer
        off = next(r for r in group if r["label"] == "offtopic")
        assert ("beta" if dataset == "alpha" else "alpha") in off["doc"]  # from the other dataset
        words = [len(r["doc"].split()) for r in group]
        assert max(words) == min(words), words  # one length per query: whole sentences of equal length
        lengths.add(words[0])
    assert len(lengths) > 3, lengths  # the length is drawn per query


def test_page_negatives_come_from_the_positives_own_page(tmp_path, monkeypatch):
    from data import make_sft
    # two FAQ pages of twelve answers; a query shares three words with every answer of the other page
    # and one with those of its own: BM25's ten best negatives are the other page's, page negatives not
    docs, queries, qrels = [], [], []
    for page, other in (("alpha", "beta"), ("beta", "alpha")):
        for i in range(12):
            docs.append({"_id": f"{page}-faq#{i}", "title": "", "text": f"Answer about thing{page}{i} and common "
                         f"ground, with {page}x {page}y {page}z."})
            queries.append({"_id": f"{page}-q{i}", "text": f"thing{page}{i} common {other}x {other}y {other}z"})
            qrels.append(f"{page}-q{i}\t{page}-faq#{i}\t2\n")
    write(tmp_path / "faq" / "corpus.jsonl", "\n".join(json.dumps(d) for d in docs) + "\n")
    write(tmp_path / "faq" / "queries.jsonl", "\n".join(json.dumps(q) for q in queries) + "\n")
    write(tmp_path / "faq" / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\n" + "".join(qrels))
    monkeypatch.setattr(make_sft.BM25, "from_dir", lambda d: BM25.from_corpus(load_corpus(d)))
    runs = {}
    for flag in ([], ["--page-negatives"]):
        out = tmp_path / f"sft{len(flag)}.jsonl"
        make_sft.main(["--root", str(tmp_path), "--datasets", "faq", "--n-hard", "2", "--n-medium", "1",
                       "--n-other", "1", "--mapping", "binary", "--near-dup", "0", "--out", str(out)] + flag)
        runs[bool(flag)] = [json.loads(line) for line in out.read_text().splitlines()]
    page = lambda r: r["docid"].split("#")[0]
    for paged, recs in runs.items():
        pages = {r["qid"]: page(r) for r in recs if r["score"] == 10}
        negs = [r for r in recs if r["score"] == 0]
        assert sorted(r["label"] for r in negs) == ["hard"] * 48 + ["medium"] * 24 + ["other"] * 24
        for q in pages:  # no document twice for a query: BM25's ranks 11-100 hold the page's too
            docids = [r["docid"] for r in recs if r["qid"] == q]
            assert len(docids) == len(set(docids)) == 5, docids
        same = [page(r) == pages[r["qid"]] for r in negs if r["label"] == "hard"]
        assert all(same) if paged else not any(same), (paged, same)
        if paged:
            assert all(page(r) == pages[r["qid"]] for r in negs if r["label"] != "medium")  # the other answers too


def test_held_out_sets_are_refused_for_training(tmp_path):
    from data import make_sft
    for name in ("pyfaq", "faqs-heldout", "faqs-heldout-eq30", "debian-faq", "debian-faq-eq30"):
        with pytest.raises(SystemExit, match="held out"):
            make_sft.make_records(tmp_path / name, split="train")
    for name in ("pyfaq", "debian-faq", "debian-faq-eq30"):  # test sets: no records from any split
        with pytest.raises(SystemExit, match="held out"):
            make_sft.make_records(tmp_path / name, split="dev")
    with pytest.raises(SystemExit, match="held out"):  # nor from any dataset's test split
        make_sft.make_records(tmp_path / "manpages", split="test")
