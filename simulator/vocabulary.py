"""The fixed word list simulated answers are made of: ordinary English, no rare words,
so generated prose looks plausible at a glance and passes length and language filters."""

# one string, not a list literal: four hundred quoted words would bury the words themselves
_WORD_LIST = """
    about above account across action actually add after again against age ago agree ahead
    allow almost alone along already also although always amount another answer any anyone
    anything appear apply approach area argue around article ask attention available avoid
    away back balance base basic because become before begin behind believe benefit best
    better between beyond bit both bread bring build business call can care careful carry
    case cause center certain chance change check choice choose clear close common compare
    complete concern condition consider continue control cost could course cover create
    current cut daily data deal decide deep define depend describe design detail develop
    difference different direct discuss during each early easy effect effort either else
    enough entire especially even event every evidence exactly example expect experience
    explain fact factor fairly family far fast feature feel few field figure final find
    first focus follow food form forward free fresh friend full function future general
    give goal good great ground group grow guide half hand happen hard health help here
    high hold home however human idea important improve include increase indeed instead
    interest issue item itself just keep kind know large last later lead learn least leave
    less level light likely limit line list little local long look lose main major make
    many market matter maybe mean measure meet member method middle might mind minute model
    moment month more most move much must natural near nearly need never next night note
    nothing notice number obvious offer often once only open option order other outcome
    over own part particular pass past pattern people perhaps period person place plan
    plain point policy possible power practice prepare present pressure pretty probably
    problem process produce product project provide public purpose quality question quick
    quite rather reach read ready real reason recent record reduce remain remember report
    require research rest result return review right risk role rule safe same save scale
    season second section see seem sense serve service set several shape share short should
    show side signal similar simple since single size slow small social solid some soon
    sort source space special specific stage standard start state step still store story
    strong structure study style subject success such suggest summary support sure system
    table take task team tend term test than that then theory there these thing think
    those though through time today together tool total toward track trade travel true try
    turn type under understand unit until usual value various very view visit wait walk
    want water way weather week weight well what when where whether which while whole why
    wide within without word work world worth would write year yet young
"""

WORDS: tuple[str, ...] = tuple(_WORD_LIST.split())
