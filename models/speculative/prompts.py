"""Prompt sets for the speculation benchmark and the identity tests: chat, code, copy-heavy.

Copy-heavy prompts (edit, rewrite, summarise a given text) are where prompt lookup shines;
chat is where it mostly finds nothing; code sits in between. Each set has 20 prompts.
"""

from __future__ import annotations

from models.chat_template import ChatTemplate

CHAT = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Suggest a name for a grey cat.",
    "Explain photosynthesis to a child.",
    "What should I pack for a weekend hike?",
    "Tell me a fun fact about octopuses.",
    "How many days are in a leap year?",
    "What is a good breakfast before a run?",
    "Describe the smell of rain.",
    "Why do leaves change colour in autumn?",
    "What is the tallest mountain in the world?",
    "Give me a short motivational quote.",
    "How do bees make honey?",
    "What does a librarian do?",
    "Write one sentence about the ocean.",
    "What are the primary colours?",
]

CODE = [
    "Write a Python function that reverses a string.",
    "Write a Python function to check whether a number is prime.",
    "Write a JavaScript function that sums an array of numbers.",
    "Write a Python function that returns the factorial of n.",
    "Write a SQL query that counts users per country in a table users(id, country).",
    "Write a Python class Stack with push, pop and peek methods.",
    "Write a bash one-liner that counts lines in all .py files.",
    "Write a Python function that merges two sorted lists.",
    "Write a Python function that checks if a string is a palindrome.",
    "Write a C function that swaps two integers through pointers.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Write a Python function that counts vowels in a string.",
    "Write a Go function that returns the maximum of a slice of ints.",
    "Write a Python function that flattens a nested list.",
    "Write a Python function that removes duplicates from a list, keeping order.",
    "Write a Rust function that adds two i32 values.",
    "Write a Python function that converts Celsius to Fahrenheit.",
    "Write a Python generator that yields even numbers below n.",
    "Write a Python function that reads a file and returns its lines.",
    "Write a Python function that computes the mean of a list.",
]

_TEXTS = [
    "The meeting is moved to Thursday at 10am in room 4. Please bring the quarterly report and your laptop. "
    "Lunch will be provided after the meeting.",
    "def area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n",
    "Our store opens at 9am and closes at 6pm on weekdays. On Saturdays we open at 10am and close at 4pm. "
    "We are closed on Sundays and public holidays.",
    "The quick brown fox jumps over the lazy dog. The dog did not move. The fox ran into the forest and "
    "was never seen again.",
    "Dear team, thank you for your hard work this year. The office will be closed from December 24 to "
    "January 2. Enjoy the holidays and see you next year.",
]

_TASKS = [
    "Repeat the following text exactly:\n\n{t}",
    "Rewrite the following text, keeping every sentence but replacing the first word of each with 'Note:':\n\n{t}",
    "Fix any typos in the following text and return the full corrected text:\n\n{t}",
    "Summarise the following text, quoting it where you can:\n\n{t}",
]

COPY_HEAVY = [task.format(t=text) for task in _TASKS for text in _TEXTS]

PROMPT_SETS: dict[str, list[str]] = {"chat": CHAT, "code": CODE, "copy-heavy": COPY_HEAVY}


def chat_prompt(target, user_text: str) -> list[int]:
    """Prompt tokens for one user message through the model's own chat template (from the GGUF)."""
    llm = target.llm
    source = llm.metadata.get("tokenizer.chat_template")
    if not source:
        raise ValueError("the model has no chat template in its GGUF metadata")
    template = ChatTemplate(source, bos_token="", eos_token="")

    def tokenize(text: str, special: bool) -> list[int]:
        return target.tokenize(text, special=special)

    return template.tokens([{"role": "user", "content": user_text}], tokenize)
