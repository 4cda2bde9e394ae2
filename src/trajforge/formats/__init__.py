"""Pure converters and checks for the row formats other tools consume, shared by exports and
dataset builds: ``examples`` (one LLM call normalized, the input of every converter), ``trl``
(Hugging Face TRL rows), ``openai`` (OpenAI chat messages and fine-tuning rows) and ``art``
(OpenPipe ART trajectories and groups). Each format has a converter and a check, TRL style; the
checks state the consumer's rules so a row is known to load before it is written."""
