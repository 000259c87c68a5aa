"""Data for :mod:`lightreasoner.grading`, copied from the Qwen2.5-Math evaluation toolkit (MIT licence).

* ``UNIT_WORDS``: the toolkit's unit words ("mainly from MathQA", ``parser.py``), in its order, typos and
  duplicates included. Each entry is used as a *regular expression* (so ``"q ."`` matches ``q`` + space + any
  character); ``UNIT_TEXTS`` appends the plural ``word + "s"`` of every entry, as the toolkit does.
* ``MMLU_STEM_DEMOS``: the five MAmmoTH MMLU demos of the toolkit's ``examples.py`` (``examples["mmlu_stem"]``).
  The toolkit wrote them as ordinary Python strings, so some ``\\frac`` / ``\\right`` turned into a form feed
  (``\\x0c`` + ``rac``) and a carriage return (``\\r`` + ``ight``); those characters are kept byte for byte.
"""

from __future__ import annotations

UNIT_WORDS: tuple[str, ...] = (
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .", "monkey", "prime",
    "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per", "dm", "lt", "gain", "ab", "way", "west",
    "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t", "a", "h", "no change", "men", "soldier", "pie",
    "bc", "excess", "st", "inches", "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise", "a . m", "th",
    "π r 2", "sq", "mark", "l", "toy", "coin", "sq . m", "gallon", "° f", "profit", "minw", "yr", "women", "feet",
    "am", "pm", "hr", "cu cm", "square", "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm",
    "number", "kmph", "day", "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt", "sq inch",
    "mp", "∏ cm ³", "hectare", "more", "sec", "unit", "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month", "km", "m",
    "cm", "mm", "apple", "liter", "loss", "yard", "pure", "year", "increase", "decrease", "d", "less", "Surface",
    "litre", "pi sq m", "s .", "metre", "meter", "inch",
)

UNIT_TEXTS: tuple[str, ...] = UNIT_WORDS + tuple(w + "s" for w in UNIT_WORDS)

MMLU_STEM_DEMOS: tuple[tuple[str, str], ...] = (
    (
        'Simplify and write the result with a rational denominator: $$\\sqrt{\\sqrt[3]{\\sqrt{\x0c'
        'rac{1}{729}}}}$$\nAnswer Choices: (A) \\frac{3\\sqrt{3}}{3} (B) \\frac{1}{3} (C) \\sqrt{3} (D) '
        '\\frac{\\sqrt{3}}{3}',
        'Factoring $729=3^6$ and combining the roots $\\frac{1}{2}\\frac{1}{3}\\frac{1}{2}=\\frac{1}{12}$, '
        'we get that $\\sqrt{\\sqrt[3]{\\sqrt{\x0crac{1}{729}}}}=\\left(\x0crac{1}{3^6}\right)^{\x0c'
        'rac{1}{12}}=\x0crac{1}{3^{\x0crac{1}{2}}}=\x0crac{3}{\\sqrt{3}}$. The answer is (D).',
    ),
    (
        'In animal cells, which of the following represents the most likely pathway that a secretory '
        'protein takes as it is synthesized in a cell?\nAnswer Choices: (A) Plasma membrane–Golgi '
        'apparatus–ribosome–secretory vesicle–rough ER (B) Ribosome–Golgi apparatus–rough ER–secretory '
        'vesicle–plasma membrane (C) Plasma membrane–Golgi apparatus–ribosome–secretory vesicle–rough ER '
        '(D) Ribosome–rough ER–Golgi apparatus–secretory vesicle–plasma membrane',
        'Protein synthesis starts at the ribosome, so we can eliminate (A) and (C). The ribosome is often '
        'in the endoplasmic reticulum and moves from there to the Golgi apparatus, where it is modified '
        'and packaged into a vesicle. The vesicle then floats to the plasma membrane and is secreted. The '
        'answer is (D).',
    ),
    (
        'A microwave oven is connected to an outlet, 120 V, and draws a current of 2 amps. At what rate is '
        'energy being used by the microwave oven?\nAnswer Choices: (A) 10 W (B) 30 W (C) 60 W (D) 240 W',
        'Rate of energy usage is known as power; in an dissipative electrical circuit, power is given by '
        'voltage times current. So in our case, the power is 120 V times 2 amps, or 240 W. The answer is '
        '(D).',
    ),
    (
        'Which of the following is considered an acid anhydride?\nAnswer Choices: (A) HCl (B) H2SO3 (C) '
        'SO2 (D) Al(NO3)3',
        'An acid anhydride is a compound that is derived by removing water from an acid. The chemical '
        'formula for water is H2O, which means that we need to determine which of these options, when '
        'combined with H2O, forms an acid. SO2, or Sulfur dioxide, when combined with H2O, makes H2SO4, or '
        'sulfuric acid. The answer is (C).',
    ),
    (
        'What is the output of "abc"[::-1] in Python 3? \nAnswer Choices: (A) Error (B) abc (C) cba (D) c',
        'We know that the slicing operator [::-1] takes all of the elements in the string in reverse '
        'order, so we reverse the order of the string "abc", resulting in "cba". The answer is (C).',
    ),
)
