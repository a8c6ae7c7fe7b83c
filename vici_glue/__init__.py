"""Everything in flowpin that speaks VICI to strongSwan's charon."""
