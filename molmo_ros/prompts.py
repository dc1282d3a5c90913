"""The prompts we send to MolmoE, in one place so the ROS node and the CLI ask the same way.

MolmoE was trained on these phrasings: "Point to the ..." yields one or a few `<point>` tags,
the quoted "pointing:" form asks for every occurrence (`<points>` with numbered coordinates).
"""

QUERY_PLACEHOLDER = "{query}"
POINT_TEMPLATE = "Point to the {query}"
POINT_ALL_TEMPLATE = 'pointing: Point to all occurrences of "{query}"'
CAPTION_PROMPT = "Describe this image."
OCR_PROMPT = "What does the text in this image say?"


def make_point_prompt(template: str, query: str) -> str:
    """Fill `{query}` by plain substitution, so other braces in a user's template stay literal."""
    if QUERY_PLACEHOLDER not in template:
        raise ValueError(f"the prompt template must contain {QUERY_PLACEHOLDER}: {template!r}")
    query = query.strip()
    if not query:
        raise ValueError("the query is empty; say what to point at")
    return template.replace(QUERY_PLACEHOLDER, query)
