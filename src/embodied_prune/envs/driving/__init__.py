"""Instruction-following driving on highway-env: an LLM controller picks the ego's IDM/MOBIL parameters.

The analogue of RobotxR1 (ForzaETH/LLMxRobot): a natural-language instruction goes in, a parameter
dict comes out inside ``<answer>…</answer>``, the car drives in closed loop, and the task error of the
instructed quantities is compared with the error of the default parameters.
"""
