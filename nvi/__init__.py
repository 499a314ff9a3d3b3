"""NVI: a cloud of independent servers whose tenant networks span servers without encapsulation."""
