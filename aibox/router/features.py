"""What a request's text says about the length of its answer, read without a model.

The router runs on every message, so this is plain string work: explicit hints (/fast,
/long, "in one word", "in detail", "500 words"), the kind of task (code, writing,
summarising, translating, a question, chat), how much text came attached, and a few
shape measures. Cue lists cover the languages the box is used in (English, German,
French, Spanish, Italian, Portuguese, Chinese, Japanese, Russian); a cue only has to be
common, not complete, because the estimator weighs them against each other.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

# Explicit commands at the start of a message.
FAST_HINT = re.compile(r"^\s*/(fast|short|quick)\b", re.I)
LONG_HINT = re.compile(r"^\s*/(long|detail|detailed)\b", re.I)

BRIEF = [
    r"\bin one (word|sentence|line)\b", r"\bone[- ](word|sentence|line)\b", r"\bjust (the|one)\b", r"\bonly (the|one)\b",
    r"\byes or no\b", r"\bbriefly\b", r"\bshort(ly)?\b", r"\btl;?dr\b", r"\bquick(ly)?\b", r"\bone[- ]liner\b",
    r"\bin (two|2|three|3) (words|sentences)\b", r"\bjust the (number|word|command|name)\b", r"\bkeep it short\b",
    r"\bin einem (wort|satz)\b", r"\bkurz\b", r"\bnur mit\b", r"\bja oder nein\b", r"\bzwei sätze\b",
    r"\ben un mot\b", r"\ben une phrase\b", r"\bcourt(e)?\b", r"\boui ou non\b", r"\bbrièvement\b",
    r"\ben una frase\b", r"\bbreve(mente)?\b", r"\bcorto\b", r"\bsolo sí o no\b", r"\bsí o no\b",
    r"\bin una frase\b", r"\bem uma frase\b", r"一句", r"一个词", r"简短", r"简要", r"一言で", r"кратко",
]
DETAIL = [
    r"\bin detail\b", r"\bdetailed\b", r"\bthorough(ly)?\b", r"\bin depth\b", r"\bstep by step\b", r"\bcomplete\b",
    r"\bfull\b", r"\bcomprehensive\b", r"\bevery\b", r"\bexplain\b", r"\bdescribe\b", r"\bcompare\b", r"\bdesign\b",
    r"\bpros and cons\b", r"\bessay\b", r"\bstory\b", r"\bplan\b", r"\bitinerary\b", r"\bimplement\b",
    r"\bausführlich\b", r"\bdetailliert\b", r"\berkläre\b", r"\bvollständig\w*\b", r"\bvor- und nachteile\b",
    r"\ben détail\b", r"\bdétaillé(e)?\b", r"\bexplique\b", r"\banalyse\b",
    r"\bdetallad\w*\b", r"\bexplica\b", r"\bcompleto\b", r"\bin dettaglio\b", r"\bspiegami\b", r"\bem detalhes\b",
    r"\bdetalhad\w*\b", r"详细", r"解释", r"分析", r"詳しく", r"подробно", r"объясни",
]
CODE = [
    r"```", r"\bcode\b", r"\bfunction\b", r"\bscript\b", r"\bprogram\b", r"\bclass\b", r"\bimplement\b", r"\bpython\b",
    r"\bjavascript\b", r"\btypescript\b", r"\bjava\b", r"\brust\b", r"\bgolang\b", r"\bgo http\b", r"\bc\+\+", r"\bsql\b",
    r"\bbash\b", r"\bshell\b", r"\bregex\b", r"\bregular expression\b", r"\bdockerfile\b", r"\bmakefile\b", r"\byaml\b",
    r"\bapi\b", r"\bbug\b", r"\brefactor\b", r"\bunit tests?\b", r"\bcompile\b", r"\bgit\b", r"\breact\b",
    r"\bfunktion\b", r"\bprogramm\b", r"\bfonction\b", r"\bfunción\b", r"\bprograma\b", r"函数", r"代码", r"排序",
]
CODE_WRITE = re.compile(
    r"\b(write|implement|create|build|schreibe|écris|escribe|scrivi|escreva)\b[^.?!\n]{0,60}\b("
    r"function|class|program|programm|script|api|server|component|decorator|query|dockerfile|makefile|test|tests|"
    r"implementation|funktion|fonction|función|programa|cli|deployment|trie|interface|template|"
    r"regular expression|regex)\b"
    r"|用\w*写",
    re.I,
)
WRITE = [
    r"\bwrite\b", r"\bpoem\b", r"\bstory\b", r"\bessay\b", r"\bletter\b", r"\bemail\b", r"\bblog\b", r"\bpost\b", r"\bspeech\b",
    r"\blyrics\b", r"\bhaiku\b", r"\blimerick\b", r"\bslogan\b", r"\btoast\b", r"\bdescription\b", r"\bcover letter\b",
    r"\bschreibe\b", r"\bgedicht\b", r"\bgeschichte\b", r"\bbewerbung\b", r"\bécris\b", r"\bpoème\b", r"\blettre\b",
    r"\bescribe\b", r"\bpoema\b", r"\bcuento\b", r"\bscrivi\b", r"\bpoesia\b", r"\bescreva\b", r"\bhistória\b",
    r"写一", r"诗", r"文章",
]
SUMMARISE = [
    r"\bsummar\w*\b", r"\btl;?dr\b", r"\bkey points\b", r"\bmain point\b", r"\bfasse\b", r"\bzusammen\b",
    r"\brésum\w*\b", r"\bresum\w*\b", r"\briassum\w*\b", r"总结", r"概括", r"要約",
]
TRANSLATE = [
    r"\btranslat\w*\b", r"\bhow do you say\b", r"\bin (german|french|spanish|chinese|english|italian|japanese)\b",
    r"\bübersetze\b", r"\bwas heißt\b", r"\btradu\w*\b", r"翻译", r"翻訳", r"怎么说", r"переведи",
]
QUESTION_WORDS = [
    r"^\s*(what|who|when|where|which|why|how|is|are|does|do|can|should)\b", r"^\s*(was|wer|wann|wo|wie|warum|welche)\b",
    r"^\s*(qu(e|')|qui|quand|où|comment|pourquoi|combien)\b", r"^\s*¿", r"^\s*(qual|quale|come|quanto)\b",
    r"什么|哪|吗|多少|怎么|为什么", r"ですか", r"^\s*(какая|какой|что|как|почему)\b",
]
# Questions that invite an explanation (long with a verbose model) and ones that ask for a fact.
OPEN_QUESTION = [
    r"^\s*(how (do|does|can|should|to|would)|why|what (should|are|makes|happens)|what's a good|explain|describe|tell me about)\b",
    r"\b(pros and cons|advantages|differences?|benefits|tips|ideas|recommend|example|examples)\b",
    r"\b(unterschied|vorteile|différence|diferencia|differenza|diferença|разница)\b", r"区别|不同|違い",
    r"^\s*(wie (kann|koche|mache|funktioniert)|warum|was sind)\b", r"^\s*(comment|pourquoi)\b",
    r"^\s*(¿\s*)?(cómo|por qué|cuáles son)\b", r"^\s*(come|perché)\b", r"^\s*(como|por que)\b",
    r"如何|为什么|怎么|例子|建议", r"なぜ|どうやって", r"^\s*(как|почему)\b",
]
FACTUAL = [
    r"^\s*(who|when|where|which|how (many|much|old|long|far)|what (year|day|time|port)|what is the (capital|chemical|speed|boiling|output|name))\b",
    r"^\s*(wer|wann|wo|wie viele|welche)\b", r"^\s*(qui|quand|où|combien|quelle est la capitale)\b",
    r"^\s*(¿\s*)?(quién|cuándo|dónde|cuántos|cuál es (el|la) (capital|río))\b", r"^\s*qual è\b", r"^\s*qual é\b",
    r"哪里|多少|几|是谁|首都", r"どこ|いくつ", r"^\s*(какая|какой|сколько|где|когда)\b",
    r"\b(just|only) the\b", r"\bin one word\b", r"\byes or no\b", r"\b(capital|hauptstadt|capitale)\b",
]
# Arithmetic and maths: an instruct model shows its working.
MATHS = [
    r"\d\s*(times|plus|minus|divided by|multiplied by|mal|fois|por|per|[*×x+/^])\s*\d", r"\b(calculate|solve|equation|integral|derivative|"
    r"prove|probability|berechne|löse|calcule|résous|calcula|resuelve|calcola)\b", r"计算|方程|等于多少",
]
# "What is X?": a definition, which an instruct model answers at medium length or more.
DEFINITION = [
    r"^\s*(what is|what are|what's|what does \S+ mean)\s+(?!the (capital|chemical|speed|boiling|output|name))",
    r"^\s*¿?\s*(was ist|was sind|qu'est-ce qu|qué es|que es|cos'è|che cos'è|o que é|что такое)\b(?!\s+(die|la|le|el|a) (hauptstadt|capitale?))",
    r"什么是|とは",
]
# Someone telling the box how they feel gets a caring paragraph, not a word.
FEELING = [
    r"\b(nervous|anxious|stressed|worried|sad|lonely|overwhelmed|depressed|scared|can't sleep|heartbroken)\b",
    r"\b(nervös|gestresst|traurig|einsam|stressé|triste|inquiet|estresad[oa]|nervios[oa]|preoccupat[oa])\b",
    r"焦虑|紧张|难过|不安",
]
# Forms that are short by nature, whatever the verb asking for them.
SHORT_FORM = [
    r"\b(slogan|tagline|motto|headline|title|nickname|hashtag|haiku|one-liner|name for|names for|acronym|tweet|caption|subject line)s?\b",
    r"\b(titel|titre|título|titolo|eslogan)\b", r"标语|标题|口号|俳句",
]
LIST = [r"\blist\b", r"\bbullet", r"\bname (the|three|five)\b", r"\b(three|five|ten|3|5|10) (tips|ideas|things|fruits|benefits)\b",
        r"\bnenne\b", r"\benumera\b", r"\bstichpunkt", r"要点", r"\bsteps?\b"]
GREETING = re.compile(
    r"^\s*(hi|hello|hey|yo|thanks|thank you|ok|okay|good (morning|night)|gn|lol|nice|bye|hallo|danke|tschüss|guten|"
    r"salut|bonjour|merci|bonne|hola|gracias|buenos|hasta|ciao|grazie|olá|obrigad|boa|你好|谢谢|早上好|晚安)\b",
    re.I,
)
# "a 500-word story", "in about 100 words", "en 300 palabras", "um 400 Wörter", "500字",
# "10 lines": a count of words or lines asked for, not one referred to ("the 10 most
# frequent words"), so a number must be used as an adjective or follow a preposition.
UNITS = r"(words?|wörter\w*|mots|palabras|parole|palavras|слов\w*|lines?|zeilen)"
WORD_COUNT = re.compile(
    r"(?:\b(?:in|about|around|of|under|within|at most|max(?:imum)?|approximately|roughly|exactly|up to|no more than"
    r"|en|de|unos|environ|um|etwa|ca\.?|circa|di|cerca de|em|около|не более)\s+|~\s*)(\d{1,5})\s*" + UNITS
    + r"|\b(\d{2,5})-" + UNITS + r"|(\d{2,5})\s*(字)",
    re.I,
)
SENTENCE_COUNT = re.compile(r"\b(one|two|three|a|1|2|3)[- ](sentence|sentences|line|lines|paragraph)\b", re.I)
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")

# Words of output per requested unit, and tokens per word of an answer (Qwen's tokenizer;
# Chinese "字" counts characters, about one token each).
TOKENS_PER_WORD = 1.4


def _any(patterns: list[str], text: str) -> bool:
    return any(re.search(p, text, re.I) for p in patterns)


@dataclass(frozen=True)
class Features:
    """Length-relevant facts about one request; `vector` is what the estimator weighs."""

    chars: int
    words: int
    lines: int
    attached_chars: int
    hint: str | None  # "fast" or "long" from /fast or /long
    brief: bool
    detail: bool
    code: bool
    code_write: bool
    write: bool
    summarise: bool
    translate: bool
    question: bool
    list_request: bool
    open_question: bool
    factual: bool
    maths: bool
    definition: bool
    feeling: bool
    short_form: bool
    greeting: bool
    requested_tokens: int | None  # from an explicit word or line count
    cjk: bool
    agent: str | None

    def as_dict(self) -> dict:
        return asdict(self)

    def vector(self) -> list[float]:
        """Numbers for the linear estimator, in the order of `VECTOR_NAMES`."""
        return [
            1.0,
            math.log1p(self.chars),
            math.log1p(self.attached_chars),
            math.log1p(self.words),
            float(self.lines > 1),
            float(self.brief),
            float(self.detail),
            float(self.code),
            float(self.code_write),
            float(self.write),
            float(self.summarise),
            float(self.translate),
            float(self.translate) * math.log1p(self.attached_chars),
            float(self.summarise) * math.log1p(self.attached_chars),
            float(self.question),
            float(self.list_request),
            float(self.open_question),
            float(self.factual),
            float(self.maths),
            float(self.definition),
            float(self.feeling),
            float(self.short_form),
            float(self.greeting),
            float(self.cjk),
            float(self.chars < 25),
            math.log1p(self.requested_tokens or 0),
            float(self.requested_tokens is not None),
        ]


VECTOR_NAMES = [
    "bias", "log_chars", "log_attached", "log_words", "multiline", "brief", "detail", "code", "code_write", "write",
    "summarise", "translate", "translate_x_attached", "summarise_x_attached", "question", "list", "open_question", "factual",
    "maths", "definition", "feeling", "short_form", "greeting", "cjk",
    "tiny", "log_requested", "has_requested",
]


def split_attachment(text: str) -> tuple[str, str]:
    """The instruction and the text it works on: whatever follows the first line when that
    line ends in ':' or a blank line separates them (how people paste a text to work on)."""
    head, sep, rest = text.partition("\n")
    if not sep:
        return text, ""
    if head.rstrip().endswith((":", "：")) or rest.startswith("\n"):
        return head, rest.strip()
    return text, ""


def requested_tokens(instruction: str) -> int | None:
    m = WORD_COUNT.search(instruction)
    if m:
        n, unit = next((int(m.group(i)), m.group(i + 1).lower()) for i in (1, 3, 5) if m.group(i))
        if unit.startswith(("line", "zeile")):
            return int(n * 12)
        if unit == "字":
            return n
        return int(n * TOKENS_PER_WORD)
    m = SENTENCE_COUNT.search(instruction)
    if m:
        count = {"one": 1, "a": 1, "1": 1, "two": 2, "2": 2, "three": 3, "3": 3}[m.group(1).lower()]
        per = 90 if m.group(2).lower().startswith("paragraph") else 25
        return count * per
    return None


def extract(text: str, agent: str | None = None, attachment_chars: int = 0) -> Features:
    """Features of a request; `attachment_chars` counts text attached outside the message
    (a file, a forwarded message) on top of any pasted into it."""
    instruction, pasted = split_attachment(text)
    # A CJK character carries about as much as a word, or three Latin letters.
    cjk_chars = len(CJK.findall(instruction))
    hint = "fast" if FAST_HINT.match(text) else "long" if LONG_HINT.match(text) else None
    return Features(
        chars=len(instruction) + 2 * cjk_chars,
        words=len(instruction.split()) + cjk_chars,
        lines=instruction.count("\n") + 1,
        attached_chars=len(pasted) + max(0, attachment_chars),
        hint=hint,
        brief=_any(BRIEF, instruction),
        detail=_any(DETAIL, instruction),
        code=_any(CODE, text[:2000]),
        code_write=bool(CODE_WRITE.search(instruction)),
        write=_any(WRITE, instruction),
        summarise=_any(SUMMARISE, instruction),
        translate=_any(TRANSLATE, instruction),
        question=_any(QUESTION_WORDS, instruction) or instruction.rstrip().endswith(("?", "？")),
        list_request=_any(LIST, instruction),
        open_question=_any(OPEN_QUESTION, instruction),
        factual=_any(FACTUAL, instruction),
        maths=_any(MATHS, instruction),
        definition=_any(DEFINITION, instruction),
        feeling=_any(FEELING, instruction),
        short_form=_any(SHORT_FORM, instruction),
        greeting=bool(GREETING.match(instruction)) and len(instruction) < 40,
        requested_tokens=requested_tokens(instruction),
        cjk=bool(CJK.search(instruction)),
        agent=agent,
    )



# Sums asked in words or symbols; wider than MATHS, which the length model was fitted on.
ARITHMETIC = re.compile(
    r"\d\s*(plus|minus|times|divided by|multiplied by|mal|geteilt durch|fois|moins|divisé par|más|menos|por|dividido entre|"
    r"più|meno|per|diviso|vezes|[-+*/×÷^])\s*\d|\d\s*(加|减|乘以|除以)\s*\d|\d\s*% of\b|\bsquare root\b|\bpower of\b",
    re.I,
)
TRANSLATE_EXTRA = re.compile(r"訳|翻譯|\bübersetz", re.I)


def task_kind(text: str, f: Features) -> str:
    """The kind of task in the evaluation set's terms (aibox.router.quality.KINDS), so the
    router can weigh each model's measured rate of right answers for it."""
    if f.code or f.code_write:
        return "code"
    if f.summarise:
        return "summary"
    if f.translate or TRANSLATE_EXTRA.search(text):
        return "translation"
    instruction, _ = split_attachment(text)
    if f.maths or ARITHMETIC.search(instruction):
        return "arithmetic"
    asks = f.factual or f.question or instruction.rstrip().endswith(("?", "？"))
    if asks and not f.write and not f.open_question and (f.brief or f.factual or not f.definition):
        return "fact"
    return "instruction"
