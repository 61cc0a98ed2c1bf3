"""A deterministic, realistic sample crawl: one gzip WARC that exercises every stage of the cleaner.

`write_sample_warc` writes a small Common-Crawl-like WARC file (WARC/1.0, one gzip member per record,
a `warcinfo` record first and every `response` preceded by its `request`) whose pages are generated
from the sentence pools below, so the project's demo, tests and benchmarks need no download and no
file outside this package. The same seed always gives a byte-identical file.

Every page belongs to one category, and the returned `SampleManifest` lists the target URLs planted in
each one, so a test can check what each pipeline stage keeps, drops or rewrites:

* ``en_article`` / ``zh_article``: English and simplified-Chinese articles (4-8 paragraphs, no sentence
  repeated within a page) inside realistic boilerplate: header, nav menu, "related posts" sidebar,
  footer with copyright and privacy links, cookie notice. They should survive extraction, language ID
  and the quality, repetition and dirty-word filters.
* ``exact_duplicate``: byte-identical copies of earlier articles under new URLs on other sites.
* ``near_duplicate``: earlier articles with about 3% of the words (characters for Chinese) changed, in
  another site's boilerplate. ``SampleManifest.duplicate_of`` maps each copy to its original.
* ``same_url``: two re-crawls of earlier articles' URLs, later WARC-Date: one identical, one updated.
  Their URLs are therefore also listed under ``en_article`` / ``zh_article``.
* ``spam``: repeated lines, a keyword-stuffed list, Chinese coupon spam, a page of nothing but links.
* ``pii``: normal articles plus a contact paragraph with e-mail addresses, IPv4 addresses and US, UK and
  Chinese phone numbers; the exact strings planted are listed under ``categories["pii_strings"]``.
* ``non_utf8``: a GBK Chinese page (declared gbk), a Latin-1 English page (declared iso-8859-1) and an
  English page declared utf-8 with invalid bytes in it.
* ``empty``: a zero-length body, ``<html><body></body></html>``, a page with boilerplate and no article.
* ``large``: one English page of about ``large_page_mb`` MB (sentences repeat there).
* ``other_language``: one German and one French article.
* ``blocked_url``: an ordinary English article under a URL that adult-content URL blocklists catch.
* ``non_html``: a PDF and a PNG response (plus one ``metadata`` record about the PDF).

Records of all these categories are shuffled with the seeded RNG (a copy is always written after the
page it copies). The file then ends with the broken input, in this order:

* ``broken_header``: one gzip member whose WARC header block is garbage. warcio and fastwarc both yield
  one record without a type for it (``rec_type`` None / "unknown") and then raise (warcio:
  ``ArchiveLoadFailed``, fastwarc: ``OSError('Invalid WARC header')``): a plain loop stops here, after
  ``SampleManifest.records_before_broken`` records;
* ``after_broken``: a normal English article (request + response), the sentinel that only a reader which
  resynchronises at the next gzip member recovers;
* ``truncated``: a request, then a response whose gzip member is cut in half, so the file ends in a
  truncated gzip stream. Read from the sentinel on, warcio and fastwarc yield this response without any
  error but with its body cut short (shorter than its Content-Length); ``gzip.decompress`` of the whole
  file raises EOFError.

All sites, people, addresses and phone numbers are fictitious.
"""

from __future__ import annotations

import argparse
import gzip
import html
import io
import json
import random
import re
import struct
import unicodedata
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import urlsplit

from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from cpt.io import write_text, written_file

# ---------------------------------------------------------------------------------------------------
# Text pools (original sentences; each 12-30 words or 20-50 Chinese characters, none repeated)
# ---------------------------------------------------------------------------------------------------

EN_SENTENCES: tuple[str, ...] = (
    # science
    "The light we see from distant galaxies left them millions of years ago, so every telescope is also "
    "a kind of time machine.",
    "Tardigrades can survive freezing, boiling and even the vacuum of space by drying out and slowing "
    "their metabolism almost to a stop.",
    "Plate tectonics explains why the same fossil ferns appear in rocks from South America, Africa, India "
    "and Antarctica.",
    "A single teaspoon of healthy soil can contain more living microorganisms than there are people on "
    "the entire planet.",
    "Octopuses have three hearts and blue blood, and most of their neurons are found in their arms rather "
    "than in the brain.",
    "Researchers measure the age of ancient wood by counting tree rings and comparing their patterns with "
    "long regional records.",
    "When warm, moist air rises quickly over hot ground in summer, it cools and forms the towering clouds "
    "that bring afternoon storms.",
    "Honeybees communicate the direction and distance of a food source through a waggle dance performed "
    "on the vertical comb.",
    "The human body replaces most of the cells lining the stomach every few days because the acid there "
    "is so harsh.",
    "Glaciers move slowly downhill under their own weight, grinding the bedrock beneath them into a fine "
    "powder that colours rivers milky green.",
    "Comets are loose clumps of ice and dust, and their tails always point away from the sun because of "
    "the solar wind.",
    # cooking
    "To make a good risotto, add the warm stock one ladle at a time and stir patiently until the rice "
    "turns creamy.",
    "Toasting whole spices in a dry pan for a minute releases their oils and gives curries a much deeper "
    "aroma.",
    "Bread dough needs time more than effort, and a slow overnight rise in the fridge develops a richer "
    "flavour.",
    "A sharp knife is safer than a dull one because it cuts cleanly instead of slipping off the skin of a "
    "tomato.",
    "Salting aubergine slices and letting them rest for twenty minutes draws out moisture and keeps them "
    "from soaking up oil.",
    "Homemade stock made from roasted bones, onion peel and carrot ends costs almost nothing and tastes "
    "far better than cubes.",
    "Resting a roast for fifteen minutes after cooking lets the juices settle back into the meat instead "
    "of running onto the board.",
    "Fresh pasta only needs flour and eggs, but kneading the dough until it feels smooth and elastic takes "
    "about ten minutes.",
    "A squeeze of lemon at the end of cooking can brighten a heavy stew in the same way that salt lifts a "
    "bland soup.",
    "Caramelising onions properly takes at least forty minutes over low heat, so recipes that promise ten "
    "minutes are being optimistic.",
    "Pickling vegetables in vinegar, sugar and salt was once a necessity for surviving winter and is now a "
    "popular weekend hobby.",
    # travel
    "The night train from Vienna to Venice crosses the Alps while most passengers are asleep and arrives "
    "just after breakfast.",
    "Travellers who visit Kyoto in early spring should book rooms months ahead, because the cherry "
    "blossom season draws enormous crowds.",
    "A small backpack forces you to pack only what you really need, and it makes climbing station stairs "
    "much less tiring.",
    "Many old European towns have a central square where the weekly market, the town hall and the main "
    "church all meet.",
    "The coastal road along the cliffs is narrow and winding, so most visitors prefer to take the local "
    "bus and enjoy the view.",
    "Learning a few polite phrases in the local language usually earns a warm smile, even when your "
    "pronunciation is far from perfect.",
    "Ferries between the islands run several times a day in summer but only twice a week once the autumn "
    "storms arrive.",
    "Hiking to the mountain hut took us six hours, and the soup served at the long wooden table tasted "
    "better than any restaurant meal.",
    "Night markets are the best place to try regional snacks, because the stalls change every few metres "
    "and prices are usually low.",
    "Travel insurance seems like an unnecessary expense until a delayed flight or a twisted ankle turns a "
    "holiday into a problem.",
    "The desert looked empty at noon, but after sunset the sand came alive with beetles, foxes and the "
    "calls of small owls.",
    # history
    "The printing press spread across Europe within a few decades, making books cheaper and helping new "
    "ideas travel faster than ever.",
    "Roman engineers built aqueducts with such a precise gentle slope that water flowed for dozens of "
    "kilometres using gravity alone.",
    "The Silk Road was never a single road but a shifting network of caravan routes linking China, "
    "Central Asia, Persia and the Mediterranean.",
    "Medieval castles were often cold, smoky and crowded, and life inside them was far less romantic than "
    "modern films suggest.",
    "The first transatlantic telegraph cable, completed in 1858, failed after only a few weeks but proved "
    "that the idea could work.",
    "Ancient Egyptians used a calendar of three hundred and sixty five days based on the yearly flooding "
    "of the Nile.",
    "Lighthouse keepers once lived in isolated towers for months, trimming wicks and polishing lenses so "
    "that ships could pass safely.",
    "The Industrial Revolution moved millions of people from farms into cities, where factory bells "
    "rather than daylight set the rhythm of work.",
    "Historians rely on letters, tax records and ship logs to reconstruct the everyday lives of people "
    "who never appeared in chronicles.",
    "The Great Library of Alexandria declined slowly over centuries rather than vanishing in one dramatic "
    "fire, as popular stories claim.",
    "Early explorers navigated by the stars, using simple instruments to estimate their latitude while "
    "their longitude remained a dangerous guess.",
    # sport
    "Marathon runners usually hit a wall around the thirtieth kilometre, when the body has burned through "
    "most of its stored glycogen.",
    "The local football club trains twice a week on a muddy pitch behind the school, and anyone over "
    "sixteen is welcome to join.",
    "Good cyclists save energy by riding in a tight group, taking turns at the front where the wind "
    "resistance is strongest.",
    "Swimming is gentle on the joints, which is why doctors often recommend it to people recovering from "
    "knee or back injuries.",
    "In tennis, a strong second serve matters as much as a fast first serve, because double faults hand "
    "points to the opponent.",
    "The rowing crew practised at dawn every morning, when the river was calm and the city had not yet "
    "woken up.",
    "Rock climbers always check each other's knots and harnesses before leaving the ground, no matter how "
    "experienced they are.",
    "A proper warm-up raises the heart rate gradually and makes muscles less likely to tear during a "
    "sudden sprint.",
    "The crowd fell silent as the goalkeeper stepped forward to take the final penalty of a long and "
    "tense shootout.",
    "Chess became an official school sport in several countries because it teaches patience, planning "
    "and graceful losing.",
    # technology
    "Modern smartphones contain more computing power than the machines that guided the first astronauts "
    "to the moon.",
    "Backing up important files to two different places protects you from a failing disk as well as from "
    "a stolen laptop.",
    "Solar panels work even on cloudy days, although their output drops noticeably when thick clouds "
    "cover the sky.",
    "Open source software is written in public, so anyone can read the code, report a problem or suggest "
    "an improvement.",
    "Electric buses are quieter than diesel ones, and several cities now charge them overnight in large "
    "depots on the edge of town.",
    "A strong password is long rather than complicated, and a phrase of four random words is easier to "
    "remember than a jumble of symbols.",
    "Engineers test bridges with computer models long before construction begins, simulating heavy "
    "traffic, strong wind and even earthquakes.",
    "Batteries slowly lose capacity with every charge cycle, especially when they are kept at full charge "
    "in a hot car.",
    "Translation software has improved greatly, but it still struggles with jokes, idioms and words that "
    "depend heavily on context.",
    "The first computer mouse was carved from a block of wood and had two metal wheels instead of a "
    "rubber ball.",
    "Data centres use enormous amounts of water and electricity to keep thousands of servers cool "
    "throughout the year.",
    # gardening
    "Tomatoes need at least six hours of direct sunlight each day, and they produce more fruit when "
    "watered deeply but not too often.",
    "Spreading a thick layer of mulch around young shrubs keeps the soil moist and stops weeds from "
    "taking over in summer.",
    "Compost is ready when it smells like a forest floor and you can no longer recognise the vegetable "
    "scraps you added.",
    "Planting marigolds between rows of beans is an old trick that many gardeners believe keeps certain "
    "pests away.",
    "Most herbs prefer poor, well drained soil, and rosemary in particular will sulk if its roots stay "
    "wet for long.",
    "Autumn is the best time to plant tulip bulbs, because they need a long cold period before they "
    "flower in spring.",
    "Rainwater collected in a simple barrel is softer than tap water, and many house plants grow better "
    "when given it.",
    "Pruning fruit trees in late winter, while they are still dormant, encourages strong new growth and a "
    "bigger harvest.",
    "Earthworms are a gardener's best friends, pulling fallen leaves underground and leaving channels "
    "that let air reach the roots.",
    "A small pond attracts frogs, dragonflies and birds within a single season, even in the middle of a "
    "busy town.",
    # everyday life and nature
    "Learning to play a musical instrument as an adult is slower than in childhood, but regular short "
    "practice still brings steady progress.",
    "Walking for half an hour a day improves sleep, mood and heart health more than most people expect.",
    "Public libraries now lend far more than books, offering sewing machines, telescopes and quiet rooms "
    "for people working from home.",
    "The old bridge was repainted in its original deep red after residents voted to restore the colour "
    "it had a century ago.",
    "Migrating geese fly in a V formation so that each bird can ride the rising air created by the wings "
    "of the one ahead.",
)

ZH_SENTENCES: tuple[str, ...] = (
    # 科学
    "远方星系发出的光在路上走了几百万年，所以每一架望远镜其实也是一台观察过去的时间机器。",
    "水熊虫能够在冰冻、沸水甚至太空真空中存活，因为它们会脱水并让新陈代谢几乎完全停止。",
    "一小勺健康的土壤里生活着数量惊人的微生物，比地球上的人口还要多得多。",
    "章鱼有三颗心脏和蓝色的血液，它的大部分神经细胞分布在触手里而不是大脑中。",
    "科学家通过数树木的年轮并与区域气候记录对比，可以准确推算出古老木材的年代。",
    "夏天午后，湿热空气在地面迅速上升冷却，形成高耸的积雨云，常常带来短暂的雷阵雨。",
    "蜜蜂通过在蜂巢上跳摇摆舞，把花蜜所在的方向和距离准确地告诉同伴。",
    "冰川在自身重量的作用下缓慢向下移动，把岩石磨成细粉，使河水呈现出浅绿色。",
    "彗星是由冰和尘埃组成的松散团块，它的尾巴总是背向太阳，这是太阳风造成的。",
    "你知道吗，人的胃壁细胞每隔几天就会更新一次，因为胃酸的腐蚀性实在太强了！",
    "月球的引力牵动着海水，于是沿海地区每天都会出现两次涨潮和两次落潮。",
    # 美食
    "做红烧肉时先把五花肉焯水去腥，再用小火慢慢炖上一个小时，肉才会软糯入味。",
    "炒青菜要大火快炒，出锅前再放盐，这样菜叶才能保持翠绿和爽脆的口感。",
    "包饺子的面团要揉到光滑有弹性，然后盖上湿布醒半个小时，擀皮时才不容易破。",
    "熬一锅好粥的秘诀是米和水的比例要合适，并且要在锅里不停搅拌防止粘底。",
    "把干辣椒和花椒放进热油里用小火慢慢煸香，就能做出一碗香气扑鼻的红油。",
    "蒸鱼的时间不能太长，水开后用大火蒸八分钟左右，鱼肉的口感最为鲜嫩。",
    "自己在家用老面发酵的馒头虽然费时间，但口感比超市买的要松软得多。",
    "腌制泡菜需要准备干净无油的坛子，否则泡菜很容易发霉变质，前功尽弃。",
    "切洋葱之前把它放进冰箱冷藏一会儿，可以明显减少刺激眼睛的气味。",
    "一锅好的高汤需要用骨头和蔬菜慢慢熬煮好几个小时，这是许多名菜的基础。",
    "南方人喜欢在冬至这天吃汤圆，而许多北方人则习惯在这一天包饺子。",
    # 旅游
    "春天去江南水乡旅行，可以坐着乌篷船穿过古老的石桥，欣赏两岸的白墙黑瓦。",
    "从成都坐高铁到重庆只需要一个多小时，非常适合安排一个周末的短途旅行。",
    "在高原地区旅行时要注意循序渐进，刚到的第一天最好多休息，避免剧烈运动。",
    "夜市是品尝当地小吃的好地方，每走几步就能看到不同的摊位和特色美食。",
    "出门旅行时背一个轻便的双肩包，比拖着沉重的行李箱爬楼梯轻松多了。",
    "黄山的日出非常壮观，很多游客半夜就起床登山，只为在山顶看到第一缕阳光。",
    "在海边小镇住上几天，每天早上去码头看渔船归来，是一种难得的放松方式。",
    "出门在外，学几句当地方言的问候语，难道不能让旅途多收获一些热情的笑容吗？",
    "沙漠的白天看起来空无一物，但太阳落山后，沙地上就会出现许多活跃的小动物。",
    "秋天的九寨沟五彩斑斓，湖水倒映着红叶和雪山，吸引了大量摄影爱好者。",
    "乘坐绿皮火车慢慢穿越西北大地，可以看到戈壁、草原和雪山不断变换的风景。",
    # 历史
    "活字印刷术的发明大大降低了书籍的成本，让知识能够更快地在社会中传播。",
    "古代的丝绸之路并不是一条固定的道路，而是连接东西方的许多商队路线组成的网络。",
    "秦朝统一了文字、货币和度量衡，为后来两千多年的统一国家奠定了基础。",
    "都江堰水利工程已经使用了两千多年，至今仍在灌溉成都平原的大片农田。",
    "宋代的城市商业十分繁荣，夜市营业到深夜，街头到处是茶馆和酒楼。",
    "郑和率领庞大的船队七次远航，到达了东南亚、印度洋沿岸和非洲东海岸。",
    "历史学家通过研究古代书信、账本和地方志，来还原普通百姓的日常生活。",
    "敦煌莫高窟保存了大量精美的壁画和彩塑，是研究古代艺术的重要宝库。",
    "古人利用日晷观察太阳影子的变化来计时，这是人类最早的计时工具之一。",
    "大运河连接了南北五大水系，在很长时间里是运送粮食和货物的重要通道。",
    "长城并不是一次修建完成的，而是经过许多朝代不断修缮和扩建而成。",
    # 体育
    "马拉松选手通常在三十公里左右会感到极度疲劳，这时身体储存的糖原几乎耗尽。",
    "每天坚持慢跑半个小时，不仅能增强心肺功能，还能帮助改善睡眠质量。",
    "乒乓球在中国拥有广泛的群众基础，很多公园里都能看到老人和孩子一起打球。",
    "游泳对关节的压力很小，因此医生常常推荐膝盖受过伤的人进行这项运动。",
    "运动前充分热身可以让心率逐渐升高，大大降低肌肉拉伤的风险。",
    "社区篮球场每到傍晚就聚满了年轻人，比赛常常一直持续到天黑以后。",
    "围棋讲究全局观念，谁能想到一步看似普通的落子竟然决定了整盘棋的胜负？",
    "攀岩运动员在离开地面之前，总会互相检查绳结和安全带是否牢固。",
    "比赛进入点球大战时，全场观众都屏住了呼吸，等待守门员做出扑救！",
    "太极拳动作缓慢而连贯，特别适合中老年人用来锻炼身体和放松心情。",
    # 科技
    "今天一部普通的智能手机，计算能力已经超过了当年引导宇航员登月的计算机。",
    "重要的文件最好备份在两个不同的地方，这样即使硬盘损坏也不会丢失数据。",
    "太阳能电池板在阴天也能发电，只是厚厚的云层会让发电量明显下降。",
    "开源软件的代码是公开的，任何人都可以阅读、报告问题或者提出改进建议。",
    "电动公交车比柴油车安静得多，许多城市已经在夜间集中为它们充电。",
    "一个好的密码应该足够长，由几个随机词语组成的句子比复杂的符号更容易记住。",
    "工程师在建桥之前会用计算机模拟重型车辆、强风甚至地震对桥梁的影响。",
    "锂电池每充放电一次容量都会略微下降，长期在高温下满电存放损耗更快。",
    "机器翻译的水平提高了很多，但在处理笑话、成语和双关语时仍然常常出错。",
    "数据中心需要消耗大量的电力和水，来给成千上万台服务器全年降温。",
    "高铁的轨道采用无缝焊接技术，所以列车在高速行驶时依然非常平稳安静。",
    # 园艺
    "番茄每天至少需要六个小时的直射阳光，浇水时要一次浇透，但不要过于频繁。",
    "在小树苗周围铺上一层厚厚的覆盖物，可以保持土壤湿润，还能抑制杂草生长。",
    "堆肥闻起来像森林里的泥土，看不出原来的菜叶果皮时，就说明已经可以使用了。",
    "大多数香草喜欢排水良好的土壤，迷迭香的根如果长期泡在水里就会烂掉。",
    "秋天是种植郁金香球根的最佳时间，因为它们需要经历一段寒冷期才能在春天开花。",
    "收集起来的雨水比自来水更柔和，许多室内植物用它浇灌长得更好。",
    "果树最好在冬末还在休眠时修剪，这样来年春天会长出更健壮的新枝。",
    "蚯蚓是园丁最好的朋友，它们把落叶拖进地下，还在土壤中留下让空气流通的通道。",
    "阳台上种几盆薄荷和小葱，既能点缀环境，做饭时还可以随手摘来用。",
    "在院子里挖一个小池塘吧，不到一年就会引来青蛙、蜻蜓和各种鸟类！",
    # 生活与自然
    "成年人学习乐器虽然比孩子慢一些，但只要每天坚持短时间练习，也会稳步进步。",
    "公共图书馆现在不只是借书的地方，还提供自习室、讲座和各种文化活动。",
    "大雁在迁徙时会排成整齐的人字形队伍，每只鸟都能借助前方同伴翅膀带起的上升气流。",
    "老城区的石板路经过修缮后重新开放，吸引了许多市民在周末前来散步。",
    "茶农在清明前采摘的嫩芽制成的绿茶，香气清新，价格也往往最高。",
)

EN_TITLES: dict[str, tuple[str, ...]] = {
    "science": (
        "What the Night Sky Can Teach Us",
        "Small Creatures With Remarkable Powers",
        "How Scientists Read the Past in Rocks and Wood",
    ),
    "food": (
        "Slow Cooking for Busy Weeknights",
        "Kitchen Habits Worth Learning Early",
        "A Beginner's Guide to Simple Home Cooking",
    ),
    "travel": (
        "Notes From a Long Weekend Away",
        "Travelling Light Through Old Towns",
        "What We Learned on the Night Train",
    ),
    "history": (
        "Forgotten Stories From the Age of Invention",
        "How Ordinary People Lived Centuries Ago",
        "The Long Road Behind Modern Maps",
    ),
    "sport": (
        "Lessons From the Amateur Running Club",
        "Why Team Sports Keep Us Coming Back",
        "Training Smarter as a Weekend Athlete",
    ),
    "tech": (
        "Everyday Technology Explained Plainly",
        "Keeping Your Digital Life in Order",
        "The Quiet Engineering Behind City Life",
    ),
    "garden": (
        "A Calm Guide to the Spring Garden",
        "Growing More With Less Effort",
        "What Experienced Gardeners Do Differently",
    ),
}

ZH_TITLES: dict[str, tuple[str, ...]] = {
    "keji": ("身边的科技小知识", "数字生活的整理之道", "城市背后的安静工程"),
    "meishi": ("家常菜的小窍门", "慢火烹饪的乐趣", "厨房新手入门指南"),
    "lvyou": ("周末短途旅行笔记", "轻装出行走古镇", "火车上的风景与故事"),
    "lishi": ("古代发明的故事", "普通百姓的日常生活", "一条运河的千年变迁"),
    "tiyu": ("业余跑步的心得", "为什么我们爱上团队运动", "周末运动者的科学训练"),
    "kexue": ("夜空告诉我们的事", "神奇的小生物", "从岩石和年轮读懂过去"),
    "yuanyi": ("春天花园的打理指南", "阳台种菜的经验", "老园丁的种植秘诀"),
}

EN_AUTHORS = ("Jane Whitfield", "Tom Okafor", "Priya Raman", "Lucas Moreau", "Hannah Berg", "Sam Delaney")
ZH_AUTHORS = ("王明", "李华", "陈静", "张伟", "刘洋", "赵丽")

DE_PARAGRAPHS = (
    "Der kleine Bahnhof am Rand des Dorfes wurde vor über hundert Jahren gebaut und ist bis heute in "
    "Betrieb. Jeden Morgen warten dort Pendler, Schulkinder und Wanderer auf den ersten Zug in die Stadt. "
    "Im Sommer blühen entlang der Gleise Mohnblumen und Kornblumen, die von den Anwohnern gepflegt werden.",
    "Die Gemeinde hat beschlossen, das alte Empfangsgebäude zu renovieren und darin ein kleines Café "
    "einzurichten. Viele Bürger haben dafür Geld gespendet oder an den Wochenenden bei den Arbeiten "
    "geholfen. Der Bürgermeister erklärte, dass der Bahnhof ein wichtiger Treffpunkt für alle Generationen "
    "bleiben soll.",
    "Auch die Fahrpläne sollen verbessert werden, damit die Züge am Abend häufiger fahren. Besonders "
    "ältere Menschen, die kein eigenes Auto besitzen, würden davon profitieren. Die Arbeiten beginnen im "
    "Frühjahr und sollen vor dem Herbst abgeschlossen sein.",
)

FR_PARAGRAPHS = (
    "Le marché couvert de la vieille ville ouvre ses portes chaque samedi matin dès sept heures. Les "
    "producteurs des villages voisins y vendent des fromages, du pain au levain, des légumes de saison et "
    "du miel. Les habitants aiment s'y retrouver pour bavarder autour d'un café avant de faire leurs "
    "courses.",
    "Cette année, la mairie a décidé de rénover la grande halle en fer construite au dix-neuvième siècle. "
    "Les travaux doivent préserver la charpente d'origine tout en améliorant l'éclairage et l'isolation. "
    "Pendant le chantier, les étals seront installés provisoirement sur la place de l'église.",
    "Les commerçants se disent inquiets mais confiants, car leur clientèle fidèle a promis de les suivre. "
    "Une fête sera organisée à la réouverture, avec des dégustations, de la musique et des ateliers pour "
    "les enfants.",
)

LATIN1_TITLE = "A Weekend of Café Culture in Zürich"
LATIN1_PARAGRAPHS = (
    "We arrived in Zürich on a grey Friday evening and went straight to a small café near the river, where "
    "the waiter recommended a slice of apple tart with crème fraîche. The next morning we walked through "
    "the old town, admiring the painted façades and the narrow lanes that lead up to the Lindenhof terrace.",
    "Our guide, a retired teacher named Zoë, explained that many of the guild houses had been rebuilt "
    "after fires in the sixteenth century. For lunch we tried rösti with mushrooms, and my friend, a little "
    "naïve about Swiss portions, ordered a second plate that she could not finish.",
    "In the afternoon we visited a gallery showing sculptures by the Danish artist Søren Ølgaard. The déjà "
    "vu moment came at dinner, when the same waiter from the first evening served us crème brûlée at a "
    "completely different restaurant.",
    "Travelling by train made the whole trip relaxed, and the jalapeño crisps sold at the station kiosk "
    "were an unexpected highlight. Before leaving we bought chocolate for friends at home, a jar of honey "
    "from the market and a postcard of the lake at sunrise.",
)

# Words and characters swapped in to make near-duplicates.
_EN_SWAP_WORDS = (
    "quiet",
    "bright",
    "local",
    "early",
    "modest",
    "simple",
    "careful",
    "gentle",
    "steady",
    "curious",
)
_ZH_SWAP_CHARS = "新旧远近高低快慢早晚东西南北春秋冬夏山水云风"

# ---------------------------------------------------------------------------------------------------
# Sites and their boilerplate
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A fake website: its domain, language and the boilerplate every page of it carries."""

    domain: str
    name: str
    tagline: str
    lang: str
    nav: tuple[tuple[str, str], ...]  # (label, href)
    related_heading: str
    copyright_line: str  # "{year}" and "{name}" are filled in
    legal_links: tuple[tuple[str, str], ...]
    cookie_notice: str
    byline: str  # "{author}" and "{date}" are filled in


def _english_site(domain: str, name: str, tagline: str, nav: Sequence[str]) -> Site:
    return Site(
        domain=domain,
        name=name,
        tagline=tagline,
        lang="en",
        nav=tuple(
            (label, "/" if label == "Home" else "/" + label.lower().replace(" ", "-") + "/") for label in nav
        ),
        related_heading="Related posts",
        copyright_line="Copyright &copy; {year} {name}. All rights reserved.",
        legal_links=(
            ("Privacy policy", "/privacy"),
            ("Terms of use", "/terms"),
            ("Cookie settings", "/cookies"),
            ("Contact us", "/contact"),
        ),
        cookie_notice=(
            "We use cookies to improve your experience on our site. "
            "By continuing to browse you agree to our use of cookies."
        ),
        byline="By {author} &middot; {date}",
    )


def _chinese_site(domain: str, name: str, tagline: str, nav: Sequence[tuple[str, str]]) -> Site:
    return Site(
        domain=domain,
        name=name,
        tagline=tagline,
        lang="zh-CN",
        nav=tuple(nav),
        related_heading="相关文章",
        copyright_line="版权所有 &copy; {year} {name} 保留所有权利",
        legal_links=(("隐私政策", "/privacy"), ("使用条款", "/terms"), ("联系我们", "/contact")),
        cookie_notice="本站使用Cookie来改善您的浏览体验，继续浏览即表示您同意我们使用Cookie。",
        byline="作者：{author}　发布时间：{date}",
    )


_EN_NAV = ("Home", "News", "Science", "Food", "Travel", "History", "Sport", "Technology", "Garden", "About")
EN_SITES: tuple[Site, ...] = (
    _english_site(
        "greenfield-gazette.com", "Greenfield Gazette", "Local news and good reads since 1952", _EN_NAV
    ),
    _english_site(
        "riverbend-review.com",
        "Riverbend Review",
        "Stories worth your morning coffee",
        ("Home", "Latest", "Science", "Food", "Travel", "Sport", "Opinion", "About"),
    ),
    _english_site(
        "northwind-journal.com",
        "Northwind Journal",
        "Independent writing from the north",
        ("Home", "World", "Culture", "History", "Technology", "Outdoors", "Podcasts", "Subscribe"),
    ),
    _english_site(
        "maplestone-times.com",
        "Maplestone Times",
        "Your weekly digest",
        ("Home", "News", "Food", "Garden", "Travel", "Events", "Letters", "Contact"),
    ),
    _english_site(
        "silverlake-daily.com",
        "Silverlake Daily",
        "Curious about everything",
        ("Home", "Science", "Technology", "Sport", "History", "Books", "Archive", "About"),
    ),
    _english_site(
        "harborview-notes.com",
        "Harborview Notes",
        "Slow journalism from the coast",
        ("Home", "Features", "Travel", "Food", "Garden", "Photography", "Newsletter", "About"),
    ),
)

_ZH_NAV = (
    ("首页", "/"),
    ("新闻", "/news/"),
    ("科技", "/keji/"),
    ("美食", "/meishi/"),
    ("旅游", "/lvyou/"),
    ("体育", "/tiyu/"),
    ("历史", "/lishi/"),
    ("关于我们", "/about/"),
)
ZH_SITES: tuple[Site, ...] = (
    _chinese_site("qingshan-daily.com", "青山日报", "记录身边的每一天", _ZH_NAV),
    _chinese_site(
        "jiangnan-life.com",
        "江南生活网",
        "发现生活之美",
        (
            ("首页", "/"),
            ("生活", "/life/"),
            ("美食", "/meishi/"),
            ("旅游", "/lvyou/"),
            ("园艺", "/yuanyi/"),
            ("专题", "/zhuanti/"),
            ("视频", "/video/"),
            ("联系我们", "/contact/"),
        ),
    ),
    _chinese_site(
        "yunhai-tech.com",
        "云海科技",
        "科技让生活更简单",
        (
            ("首页", "/"),
            ("资讯", "/news/"),
            ("科技", "/keji/"),
            ("科学", "/kexue/"),
            ("评测", "/pingce/"),
            ("社区", "/bbs/"),
            ("下载", "/app/"),
            ("关于我们", "/about/"),
        ),
    ),
    _chinese_site("chenguang-news.com", "晨光新闻", "每天早上的第一份阅读", _ZH_NAV),
    _chinese_site(
        "zhulin-food.com",
        "竹林美食",
        "好好吃饭，认真生活",
        (
            ("首页", "/"),
            ("菜谱", "/caipu/"),
            ("美食", "/meishi/"),
            ("食材", "/shicai/"),
            ("健康", "/jiankang/"),
            ("活动", "/huodong/"),
            ("投稿", "/tougao/"),
            ("关于我们", "/about/"),
        ),
    ),
    _chinese_site(
        "yuanfang-travel.com",
        "远方旅行",
        "带上好奇心出发",
        (
            ("首页", "/"),
            ("目的地", "/mudidi/"),
            ("旅游", "/lvyou/"),
            ("攻略", "/gonglue/"),
            ("历史", "/lishi/"),
            ("体育", "/tiyu/"),
            ("游记", "/youji/"),
            ("关于我们", "/about/"),
        ),
    ),
)

# Sites that only appear in the spam, mirror and blocked-URL records.
_SPAM_SITE = _english_site(
    "best-deals-4u.com",
    "Best Deals 4U",
    "Lowest prices guaranteed",
    ("Home", "Deals", "Watches", "Bags", "Flights", "Hotels", "Coupons", "Contact"),
)
_ZH_SPAM_SITE = _chinese_site("youhui-quan-888.com", "优惠券大全", "天天领券", _ZH_NAV)
_BLOCKED_SITE = _english_site(
    "free-porn-tube.com",
    "Free Tube",
    "Videos every day",
    ("Home", "Videos", "Latest", "Popular", "Categories", "Upload", "Login", "Contact"),
)
_DE_SITE = Site(
    domain="talblick-zeitung.de",
    name="Talblick Zeitung",
    tagline="Nachrichten aus der Region",
    lang="de",
    nav=(
        ("Startseite", "/"),
        ("Region", "/region/"),
        ("Politik", "/politik/"),
        ("Kultur", "/kultur/"),
        ("Sport", "/sport/"),
        ("Wetter", "/wetter/"),
        ("Leserbriefe", "/leserbriefe/"),
        ("Kontakt", "/kontakt/"),
    ),
    related_heading="Weitere Artikel",
    copyright_line="&copy; {year} {name}. Alle Rechte vorbehalten.",
    legal_links=(("Datenschutz", "/datenschutz"), ("Impressum", "/impressum"), ("AGB", "/agb")),
    cookie_notice="Diese Website verwendet Cookies. Mit der weiteren Nutzung stimmen Sie dem zu.",
    byline="Von {author} &middot; {date}",
)
_FR_SITE = Site(
    domain="le-petit-courrier.fr",
    name="Le Petit Courrier",
    tagline="L'actualité de chez nous",
    lang="fr",
    nav=(
        ("Accueil", "/"),
        ("Actualités", "/actualites/"),
        ("Culture", "/culture/"),
        ("Sports", "/sports/"),
        ("Économie", "/economie/"),
        ("Météo", "/meteo/"),
        ("Agenda", "/agenda/"),
        ("Contact", "/contact/"),
    ),
    related_heading="À lire aussi",
    copyright_line="&copy; {year} {name}. Tous droits réservés.",
    legal_links=(("Confidentialité", "/confidentialite"), ("Mentions légales", "/mentions-legales")),
    cookie_notice="Ce site utilise des cookies pour améliorer votre expérience de navigation.",
    byline="Par {author} &middot; {date}",
)

# ---------------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------------

CATEGORIES: tuple[str, ...] = (
    "en_article",
    "zh_article",
    "exact_duplicate",
    "near_duplicate",
    "same_url",
    "spam",
    "pii",
    "non_utf8",
    "empty",
    "large",
    "other_language",
    "blocked_url",
    "non_html",
    "broken_header",
    "after_broken",
    "truncated",
)

PII_EN = (
    (
        "Readers can reach the editor, John Smith, at {0} or by phone on {1} during office hours.",
        "john.smith@example.org",
        "(415) 555-0134",
    ),
    (
        "Last week's outage was traced to a misconfigured router at {0} that forwarded traffic to {1} for "
        "several hours.",
        "192.168.10.25",
        "203.0.113.7",
    ),
    (
        "For press enquiries write to {0}, call {1}, or reach our London desk on {2}.",
        "maria.garcia@example.com",
        "+1 415-555-0199",
        "+44 20 7946 0958",
    ),
)
PII_ZH = (
    (
        "如有疑问，请联系编辑部：电子邮箱 {0}，手机 {1}，座机 {2}。",
        "zhang.wei@example.net",
        "13812345678",
        "010-62345678",
    ),
    (
        "读者热线：{0} 或 {1}，技术部门发现异常访问来自 {2}，已经及时处理。",
        "+86 138 1234 5678",
        "021-5888 6666",
        "198.51.100.23",
    ),
)


@dataclass
class Article:
    """The text of one article, independent of the site that shows it."""

    lang: str  # "en" or "zh"
    section: str
    title: str
    paragraphs: list[str]
    author: str
    published: str  # YYYY-MM-DD


@dataclass
class Page:
    """One HTTP response to write, with the bookkeeping the writer needs."""

    category: str
    url: str
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    source: Page | None = None  # the page this one copies; it is always written after it
    recrawl: bool = False  # a same-URL re-crawl: WARC-Date well after the first crawl
    metadata: bytes | None = None  # a WARC metadata record written right after the response
    article: Article | None = None
    site: Site | None = None


@dataclass
class SampleManifest:
    """What `write_sample_warc` planted, for tests and demos to check pipeline output against."""

    path: str  # the WARC written
    categories: dict[str, list[str]]  # category -> target URLs planted there (plus "pii_strings")
    duplicate_of: dict[str, str] = field(default_factory=dict)  # exact/near duplicate URL -> original URL
    n_records: int = 0  # WARC records written, the broken and truncated ones included
    records_before_broken: int = 0  # records a strict reader yields before it meets the broken header

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)


# ---------------------------------------------------------------------------------------------------
# Articles and HTML
# ---------------------------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _random_date(rng: random.Random, before: datetime) -> str:
    return (before - timedelta(days=rng.randrange(1, 400))).strftime("%Y-%m-%d")


def _split_paragraphs(sentences: list[str], sizes: list[int], sep: str) -> list[str]:
    paragraphs, start = [], 0
    for size in sizes:
        paragraphs.append(sep.join(sentences[start : start + size]))
        start += size
    return paragraphs


def english_article(rng: random.Random, before: datetime) -> Article:
    """Title + 4-8 paragraphs of 3-5 sentences drawn without replacement from EN_SENTENCES."""
    section = rng.choice(sorted(EN_TITLES))
    sizes = [rng.randint(3, 5) for _ in range(rng.randint(4, 8))]
    sentences = rng.sample(EN_SENTENCES, sum(sizes))
    return Article(
        "en",
        section,
        rng.choice(EN_TITLES[section]),
        _split_paragraphs(sentences, sizes, " "),
        rng.choice(EN_AUTHORS),
        _random_date(rng, before),
    )


def chinese_article(rng: random.Random, before: datetime) -> Article:
    """Title + 4-8 paragraphs of 3-5 sentences drawn without replacement from ZH_SENTENCES."""
    section = rng.choice(sorted(ZH_TITLES))
    sizes = [rng.randint(3, 5) for _ in range(rng.randint(4, 8))]
    sentences = rng.sample(ZH_SENTENCES, sum(sizes))
    return Article(
        "zh",
        section,
        rng.choice(ZH_TITLES[section]),
        _split_paragraphs(sentences, sizes, ""),
        rng.choice(ZH_AUTHORS),
        _random_date(rng, before),
    )


def related_posts(rng: random.Random, site: Site, n: int = 5) -> list[tuple[str, str]]:
    """Sidebar links to other (not crawled) posts of the same site."""
    titles = ZH_TITLES if site.lang.startswith("zh") else EN_TITLES
    pool = [(section, title) for section, items in sorted(titles.items()) for title in items]
    links = []
    for section, title in rng.sample(pool, n):
        slug = _slug(title) or "a" + str(rng.randrange(10**7, 10**8))
        links.append((title, f"https://www.{site.domain}/{section}/{slug}-{rng.randrange(100, 9999)}.html"))
    return links


def page_html(
    site: Site,
    url: str,
    title: str,
    main_html: str,
    related: Sequence[tuple[str, str]],
    charset: str = "utf-8",
    year: str = "2024",
) -> str:
    """The page skeleton every site shares: head, header with nav, main, sidebar, footer, cookie notice."""
    nav = "\n".join(f'      <li><a href="{href}">{label}</a></li>' for label, href in site.nav)
    side = "\n".join(f'      <li><a href="{href}">{_esc(text)}</a></li>' for text, href in related)
    legal = " | ".join(f'<a href="{href}">{label}</a>' for label, href in site.legal_links)
    copyright_line = site.copyright_line.format(year=year, name=site.name)
    return f"""<!DOCTYPE html>
<html lang="{site.lang}">
<head>
  <meta charset="{charset}">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{_esc(title)} | {site.name}</title>
  <link rel="canonical" href="{url}">
  <link rel="stylesheet" href="/static/css/main.css">
  <script>window.dataLayer = window.dataLayer || []; dataLayer.push(["config", "UA-000000-1"]);</script>
</head>
<body>
<header class="site-header">
  <a class="logo" href="https://www.{site.domain}/">{site.name}</a>
  <p class="tagline">{site.tagline}</p>
  <nav class="main-nav">
    <ul>
{nav}
    </ul>
  </nav>
</header>
<div class="layout">
  <main class="content">
{main_html}
  </main>
  <aside class="sidebar">
    <h2>{site.related_heading}</h2>
    <ul>
{side}
    </ul>
  </aside>
</div>
<footer class="site-footer">
  <p>{copyright_line}</p>
  <p class="legal">{legal}</p>
  <div class="cookie-notice" id="cookie-notice">{site.cookie_notice} <button type="button">OK</button></div>
</footer>
</body>
</html>
"""


def _article_main(article: Article, site: Site) -> str:
    byline = site.byline.format(
        author=article.author, date=f'<time datetime="{article.published}">{article.published}</time>'
    )
    body = "\n".join(f"      <p>{_esc(p)}</p>" for p in article.paragraphs)
    return f"""    <article>
      <h1>{_esc(article.title)}</h1>
      <p class="byline">{byline}</p>
{body}
    </article>"""


def english_article_html(
    article: Article, site: Site, url: str, related: Sequence[tuple[str, str]], charset: str = "utf-8"
) -> str:
    """An English article inside `site`'s boilerplate."""
    return page_html(
        site, url, article.title, _article_main(article, site), related, charset, article.published[:4]
    )


def chinese_article_html(
    article: Article, site: Site, url: str, related: Sequence[tuple[str, str]], charset: str = "utf-8"
) -> str:
    """A Chinese article inside `site`'s Chinese boilerplate (`<html lang="zh-CN">`)."""
    return page_html(
        site, url, article.title, _article_main(article, site), related, charset, article.published[:4]
    )


def article_html(
    article: Article, site: Site, url: str, related: Sequence[tuple[str, str]], charset: str = "utf-8"
) -> str:
    if article.lang == "zh":
        return chinese_article_html(article, site, url, related, charset)
    return english_article_html(article, site, url, related, charset)


# ---------------------------------------------------------------------------------------------------
# Page builders, one per category
# ---------------------------------------------------------------------------------------------------


class _Urls:
    """Hands out distinct article URLs: https://www.<site>/<section>/<slug>-<i>.html."""

    def __init__(self) -> None:
        self.i = 0

    def article(self, site: Site, article: Article) -> str:
        self.i += 1
        slug = _slug(article.title) if article.lang != "zh" else "a" + article.published.replace("-", "")
        return f"https://www.{site.domain}/{article.section}/{slug}-{self.i}.html"

    def other(self, site: Site, path: str) -> str:
        self.i += 1
        return f"https://www.{site.domain}/{path}-{self.i}.html"


def _article_page(category: str, rng: random.Random, urls: _Urls, article: Article, site: Site) -> Page:
    url = urls.article(site, article)
    body = article_html(article, site, url, related_posts(rng, site)).encode("utf-8")
    return Page(category, url, body, article=article, site=site)


def article_pages(rng: random.Random, urls: _Urls, n: int, lang: str, now: datetime) -> list[Page]:
    """`n` English (`lang="en"`) or Chinese articles spread over the fake sites of that language."""
    sites, make, category = (
        (EN_SITES, english_article, "en_article")
        if lang == "en"
        else (ZH_SITES, chinese_article, "zh_article")
    )
    return [_article_page(category, rng, urls, make(rng, now), rng.choice(sites)) for _ in range(n)]


def exact_duplicate_page(rng: random.Random, urls: _Urls, original: Page) -> Page:
    """The original's exact bytes, republished under a URL on another site (a content mirror)."""
    assert original.article is not None and original.site is not None
    sites = EN_SITES if original.article.lang == "en" else ZH_SITES
    other = rng.choice([s for s in sites if s != original.site])
    return Page("exact_duplicate", urls.article(other, original.article), original.body, source=original)


def perturb_english(paragraphs: Sequence[str], rng: random.Random, rate: float = 0.03) -> list[str]:
    """Replace `rate` of the words (at least one), keeping trailing punctuation."""
    words = [p.split(" ") for p in paragraphs]
    positions = [(i, j) for i, ws in enumerate(words) for j in range(len(ws))]
    for i, j in rng.sample(positions, max(1, round(rate * len(positions)))):
        tail = re.search(r"[.,;:!?]*$", words[i][j]).group(0)
        words[i][j] = rng.choice(_EN_SWAP_WORDS) + tail
    return [" ".join(ws) for ws in words]


def perturb_chinese(paragraphs: Sequence[str], rng: random.Random, rate: float = 0.03) -> list[str]:
    """Replace `rate` of the Chinese characters (at least one); punctuation is left alone."""
    chars = [list(p) for p in paragraphs]
    positions = [(i, j) for i, cs in enumerate(chars) for j, c in enumerate(cs) if "\u4e00" <= c <= "\u9fff"]
    for i, j in rng.sample(positions, max(1, round(rate * len(positions)))):
        chars[i][j] = rng.choice(_ZH_SWAP_CHARS)
    return ["".join(cs) for cs in chars]


def near_duplicate_page(rng: random.Random, urls: _Urls, original: Page) -> Page:
    """The original's text with ~3% of words/characters changed, in another site's boilerplate."""
    article, site = original.article, original.site
    assert article is not None and site is not None
    perturb = perturb_english if article.lang == "en" else perturb_chinese
    copy = Article(
        article.lang,
        article.section,
        article.title,
        perturb(article.paragraphs, rng),
        article.author,
        article.published,
    )
    other = rng.choice([s for s in (EN_SITES if article.lang == "en" else ZH_SITES) if s != site])
    page = _article_page("near_duplicate", rng, urls, copy, other)
    page.source = original
    return page


def same_url_pages(rng: random.Random, en_original: Page, zh_original: Page) -> list[Page]:
    """Re-crawls of two earlier URLs: the English one unchanged, the Chinese one updated."""
    article, site = zh_original.article, zh_original.site
    assert article is not None and site is not None
    paragraphs = list(article.paragraphs)
    paragraphs[-1] += "（本文已于发布后更新，补充了读者反馈的最新信息。）"
    updated = Article(
        article.lang,
        article.section,
        article.title + "（更新）",
        paragraphs,
        article.author,
        article.published,
    )
    body = article_html(updated, site, zh_original.url, related_posts(rng, site)).encode("utf-8")
    return [
        Page("same_url", en_original.url, en_original.body, source=en_original, recrawl=True),
        Page("same_url", zh_original.url, body, source=zh_original, recrawl=True),
    ]


def spam_pages(rng: random.Random, urls: _Urls) -> list[Page]:
    """Repeated lines, a keyword-stuffed list, Chinese coupon spam and a page of nothing but links."""
    repeated = "\n".join(["    <p>BUY CHEAP WATCHES NOW best price click here</p>"] * 200)
    words = (
        "cheap best discount flights hotels deals online free shipping sale buy now watches replica bags "
        "offer"
    ).split()
    stuffed = "\n".join(
        "      <li>" + " ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) + "</li>"
        for _ in range(150)
    )
    coupons = "\n".join(
        ["    <p>免费领取优惠券点击这里</p>"] * 120 + ["    <p>免费领取优惠券点击这里！！！</p>"] * 80
    )
    links = "\n".join(
        f'    <a href="https://www.link-hub-directory.com/go/{rng.randrange(10**5, 10**6)}">'
        f"best deal {k}</a><br>"
        for k in range(150)
    )
    pages = []
    for site, path, title, main in (
        (_SPAM_SITE, "watches/buy-now", "BUY CHEAP WATCHES NOW", repeated),
        (
            _SPAM_SITE,
            "deals/cheap-flights-hotels",
            "Cheap Flights Cheap Hotels Best Deals",
            f"    <h1>Cheap Flights Cheap Hotels Best Deals</h1>\n    <ul>\n{stuffed}\n    </ul>",
        ),
        (_ZH_SPAM_SITE, "quan/mianfei", "免费领取优惠券", coupons),
        (_SPAM_SITE, "links/directory", "Best Deals Directory", links),
    ):
        url = urls.other(site, path)
        pages.append(Page("spam", url, page_html(site, url, title, main, related_posts(rng, site)).encode()))
    return pages


def pii_pages(rng: random.Random, urls: _Urls, now: datetime) -> tuple[list[Page], list[str]]:
    """Two English and two Chinese articles ending with contact details; also returns the strings planted."""
    planted: list[str] = []
    pages = []
    groups = (
        (english_article, EN_SITES, PII_EN[:2]),
        (english_article, EN_SITES, PII_EN[2:]),
        (chinese_article, ZH_SITES, PII_ZH[:1]),
        (chinese_article, ZH_SITES, PII_ZH[1:]),
    )
    for make, sites, templates in groups:
        article = make(rng, now)
        for template, *values in templates:
            article.paragraphs.append(template.format(*values))
            planted.extend(values)
        pages.append(_article_page("pii", rng, urls, article, rng.choice(sites)))
    return pages, planted


def non_utf8_pages(rng: random.Random, urls: _Urls, now: datetime) -> list[Page]:
    """A GBK Chinese page, a Latin-1 English page and a utf-8-declared English page with invalid bytes."""
    site = rng.choice(ZH_SITES)
    article = chinese_article(rng, now)
    url = urls.article(site, article)
    text = chinese_article_html(article, site, url, related_posts(rng, site), charset="gbk")
    gbk = Page("non_utf8", url, text.encode("gbk"), content_type="text/html; charset=gbk")

    site = rng.choice(EN_SITES)
    article = Article(
        "en", "travel", LATIN1_TITLE, list(LATIN1_PARAGRAPHS), rng.choice(EN_AUTHORS), _random_date(rng, now)
    )
    url = urls.article(site, article)
    text = english_article_html(article, site, url, related_posts(rng, site), charset="iso-8859-1")
    latin1 = Page("non_utf8", url, text.encode("latin-1"), content_type="text/html; charset=iso-8859-1")

    site = rng.choice(EN_SITES)
    article = english_article(rng, now)
    url = urls.article(site, article)
    body = english_article_html(article, site, url, related_posts(rng, site)).encode("utf-8")
    parts = body.split(b"</p>")
    for k in range(1, len(parts) - 1, 3):  # invalid bytes at the end of every third paragraph
        parts[k] += b"\xff\xfe"
    broken = Page("non_utf8", url, b"</p>".join(parts))
    return [gbk, latin1, broken]


def empty_pages(rng: random.Random, urls: _Urls) -> list[Page]:
    """A zero-length body, an empty document and a page with boilerplate but no article."""
    site = rng.choice(EN_SITES)
    zero = Page("empty", urls.other(site, "news/empty"), b"")
    bare = Page("empty", urls.other(site, "news/blank"), b"<html><body></body></html>")
    site = rng.choice(EN_SITES)
    url = urls.other(site, "archive/index")
    chrome = Page("empty", url, page_html(site, url, "Archive", "", related_posts(rng, site)).encode())
    return [zero, bare, chrome]


def large_page(rng: random.Random, urls: _Urls, now: datetime, size_mb: float) -> Page:
    """One English page of about `size_mb` MB of article paragraphs (sentences repeat)."""
    site = rng.choice(EN_SITES)
    target = int(size_mb * 1024 * 1024)
    paragraphs: list[str] = []
    size = 0
    while size < target:
        paragraph = " ".join(rng.choice(EN_SENTENCES) for _ in range(rng.randint(3, 6)))
        paragraphs.append(paragraph)
        size += len(paragraph) + 20
    article = Article(
        "en",
        "history",
        "The Complete Archive of Our Weekly Notes",
        paragraphs,
        rng.choice(EN_AUTHORS),
        _random_date(rng, now),
    )
    return _article_page("large", rng, urls, article, site)


def other_language_pages(rng: random.Random, urls: _Urls, now: datetime) -> list[Page]:
    """One German and one French article in their own sites' boilerplate."""
    pages = []
    for site, title, paragraphs, section, author, related in (
        (
            _DE_SITE,
            "Der alte Bahnhof bekommt ein neues Leben",
            DE_PARAGRAPHS,
            "region",
            "Anna Hofmann",
            (
                "Neuer Radweg entlang des Flusses",
                "Stadtfest lockt Tausende Besucher",
                "Bibliothek verlängert Öffnungszeiten",
            ),
        ),
        (
            _FR_SITE,
            "Le marché couvert fait peau neuve",
            FR_PARAGRAPHS,
            "actualites",
            "Claire Dubois",
            (
                "Une nouvelle piste cyclable le long du canal",
                "Le festival d'été attire les foules",
                "La médiathèque ouvre le dimanche",
            ),
        ),
    ):
        article = Article(site.lang, section, title, list(paragraphs), author, _random_date(rng, now))
        url = urls.article(site, article)
        links = [
            (text, f"https://www.{site.domain}/{section}/{_slug(text)}-{rng.randrange(100, 9999)}.html")
            for text in related
        ]
        body = page_html(site, url, title, _article_main(article, site), links, year=article.published[:4])
        pages.append(Page("other_language", url, body.encode("utf-8")))
    return pages


def blocked_url_page(rng: random.Random, now: datetime) -> Page:
    """An ordinary English article under a URL with an adult keyword that URL blocklists catch."""
    article = english_article(rng, now)
    url = f"https://www.{_BLOCKED_SITE.domain}/video/1.html"
    return Page(
        "blocked_url",
        url,
        english_article_html(article, _BLOCKED_SITE, url, related_posts(rng, _BLOCKED_SITE)).encode(),
    )


def tiny_png(width: int = 8, height: int = 8) -> bytes:
    """A valid greyscale PNG with a diagonal gradient."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x + y) * 16 % 256 for x in range(width)) for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def tiny_pdf() -> bytes:
    """A one-page PDF with a line of text (structurally plausible, not validated)."""
    stream = b"BT /F1 18 Tf 72 720 Td (Annual report of the Greenfield rowing club) Tj ET"
    return (
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
        b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n"
        b"3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>\nendobj\n"
        b"4 0 obj\n<< /Length "
        + str(len(stream)).encode()
        + b" >>\nstream\n"
        + stream
        + b"\nendstream\nendobj\n"
        b"5 0 obj\n<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>\nendobj\n"
        b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


def non_html_pages(rng: random.Random, urls: _Urls) -> list[Page]:
    """A PDF (followed by a metadata record about it) and a PNG."""
    site = rng.choice(EN_SITES)
    metadata = b"fetchTimeMs: 84\r\ncharset-detected: none\r\nlanguages-cld2: none\r\n"
    pdf = Page(
        "non_html",
        urls.other(site, "files/annual-report").replace(".html", ".pdf"),
        tiny_pdf(),
        content_type="application/pdf",
        metadata=metadata,
    )
    png = Page(
        "non_html",
        urls.other(site, "images/logo").replace(".html", ".png"),
        tiny_png(),
        content_type="image/png",
    )
    return [pdf, png]


def order_pages(rng: random.Random, pages: list[Page]) -> list[Page]:
    """Shuffle, then move every copy to just after the page it copies if it came first."""
    shuffled = list(pages)
    rng.shuffle(shuffled)
    written: set[int] = set()
    waiting: dict[int, list[Page]] = {}
    ordered: list[Page] = []

    def emit(page: Page) -> None:
        ordered.append(page)
        written.add(id(page))
        for copy in waiting.pop(id(page), []):
            emit(copy)

    for page in shuffled:
        if page.source is not None and id(page.source) not in written:
            waiting.setdefault(id(page.source), []).append(page)
        else:
            emit(page)
    assert not waiting
    return ordered


# ---------------------------------------------------------------------------------------------------
# WARC writing
# ---------------------------------------------------------------------------------------------------


class _SampleWriter:
    """Writes records with WARC-Record-IDs and dates drawn from a seeded RNG (no clock, no uuid4)."""

    def __init__(self, out: io.BufferedIOBase, seed: int, start: datetime) -> None:
        self.out = out
        self.writer = WARCWriter(out, gzip=True)
        self.ids = random.Random(f"warc-record-ids-{seed}")
        self.clock = start
        self.n_records = 0
        self.warcinfo_id = ""

    def record_id(self) -> str:
        return f"<urn:uuid:{uuid.UUID(int=self.ids.getrandbits(128), version=4)}>"

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=self.ids.randint(1, 60))
        return self.clock

    def write_warcinfo(self, seed: int) -> None:
        self.warcinfo_id = self.record_id()
        info = (
            "software: cpt.demo.sample_warc\r\n"
            "format: WARC File Format 1.0\r\n"
            "conformsTo: https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.0/\r\n"
            "isPartOf: cpt-sample-crawl\r\n"
            f"description: Synthetic sample crawl (seed {seed}); "
            "all sites, people and contacts are fictitious\r\n"
            "robots: obey\r\n"
        ).encode()
        record = self.writer.create_warc_record(
            "",
            "warcinfo",
            payload=io.BytesIO(info),
            length=len(info),
            warc_content_type="application/warc-fields",
            warc_headers_dict={"WARC-Record-ID": self.warcinfo_id, "WARC-Date": _warc_date(self.clock)},
        )
        self._write(record)

    def _write(self, record: ArcWarcRecord) -> None:
        self.writer.write_record(record)
        self.n_records += 1

    def response_records(self, page: Page, when: datetime) -> list[ArcWarcRecord]:
        """The request and response records of `page` (and its metadata record, if any), unwritten."""
        parts = urlsplit(page.url)
        response_id, request_id = self.record_id(), self.record_id()
        date = _warc_date(when)
        request_headers = StatusAndHeaders(
            f"GET {parts.path or '/'} HTTP/1.1",
            [
                ("Host", parts.netloc),
                ("User-Agent", "cpt-sample-bot/1.0 (synthetic crawl; +https://example.org/cpt-sample-bot)"),
                ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                ("Accept-Language", "en-US,en;q=0.8,zh-CN;q=0.6"),
                ("Accept-Encoding", "identity"),
                ("Connection", "close"),
            ],
            is_http_request=True,
        )
        request = self.writer.create_warc_record(
            page.url,
            "request",
            http_headers=request_headers,
            warc_headers_dict={
                "WARC-Record-ID": request_id,
                "WARC-Date": date,
                "WARC-Warcinfo-ID": self.warcinfo_id,
            },
        )
        response_headers = StatusAndHeaders(
            "200 OK",
            [
                ("Date", format_datetime(when, usegmt=True)),
                ("Server", "nginx/1.24.0"),
                ("Content-Type", page.content_type),
                ("Content-Length", str(len(page.body))),
                ("Cache-Control", "max-age=600"),
                ("Connection", "close"),
            ],
            protocol="HTTP/1.1",
        )
        response = self.writer.create_warc_record(
            page.url,
            "response",
            payload=io.BytesIO(page.body),
            length=len(page.body),
            http_headers=response_headers,
            warc_headers_dict={
                "WARC-Record-ID": response_id,
                "WARC-Date": date,
                "WARC-Warcinfo-ID": self.warcinfo_id,
                "WARC-Concurrent-To": request_id,
                "WARC-Identified-Payload-Type": page.content_type.split(";")[0],
            },
        )
        records = [request, response]
        if page.metadata is not None:
            records.append(
                self.writer.create_warc_record(
                    page.url,
                    "metadata",
                    payload=io.BytesIO(page.metadata),
                    length=len(page.metadata),
                    warc_content_type="application/warc-fields",
                    warc_headers_dict={
                        "WARC-Record-ID": self.record_id(),
                        "WARC-Date": date,
                        "WARC-Warcinfo-ID": self.warcinfo_id,
                        "WARC-Concurrent-To": response_id,
                    },
                )
            )
        return records

    def write_page(self, page: Page, when: datetime) -> None:
        for record in self.response_records(page, when):
            self._write(record)

    def write_raw_member(self, data: bytes) -> None:
        """A gzip member written as is (for the broken header)."""
        self.out.write(gzip.compress(data, compresslevel=9, mtime=0))
        self.n_records += 1

    def write_truncated_page(self, page: Page, when: datetime) -> None:
        """The request normally, then the response's gzip member cut in half: the file ends mid-stream."""
        request, response = self.response_records(page, when)
        self._write(request)
        buffer = io.BytesIO()
        WARCWriter(buffer, gzip=True).write_record(response)
        member = buffer.getvalue()
        self.out.write(member[: len(member) // 2])
        self.n_records += 1


def _warc_date(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def broken_header_bytes(url: str) -> bytes:
    """A record whose WARC header block is not made of `Name: value` lines and has no usable length."""
    return (
        b"WARC/1.0\r\n"
        b"This is not a header line\r\n"
        b"WARC-Type response\r\n"
        b"WARC-Target-URI " + url.encode() + b"\r\n"
        b"Content-Length: twelve hundred\r\n"
        b"\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
        b"<html><body><p>This record cannot be parsed.</p></body></html>\r\n\r\n"
    )


def write_sample_warc(
    path: str | Path, seed: int = 0, n_articles: int = 40, large_page_mb: float = 2.0
) -> SampleManifest:
    """Write the sample WARC described in the module docstring to `path` and return what was planted.

    The file is written under a temporary name and renamed into place, so a half-written WARC never lies
    under the final name. Parent directories are created. `n_articles` (at least 5) is the number of English
    and, separately, Chinese articles.
    """
    if n_articles < 5:
        raise ValueError("n_articles must be at least 5 (duplicates and re-crawls copy 5 of each language)")
    path = Path(path)
    rng = random.Random(seed)
    start = datetime(2023, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(365 * 86400))
    urls = _Urls()

    en = article_pages(rng, urls, n_articles, "en", start)
    zh = article_pages(rng, urls, n_articles, "zh", start)
    en_sources, zh_sources = rng.sample(en, 5), rng.sample(zh, 5)
    pages: list[Page] = [*en, *zh]
    pages += [exact_duplicate_page(rng, urls, p) for p in (*en_sources[:2], *zh_sources[:2])]
    pages += [near_duplicate_page(rng, urls, p) for p in (*en_sources[2:4], *zh_sources[2:4])]
    pages += same_url_pages(rng, en_sources[4], zh_sources[4])
    pages += spam_pages(rng, urls)
    pii, pii_strings = pii_pages(rng, urls, start)
    pages += pii
    pages += non_utf8_pages(rng, urls, start)
    pages += empty_pages(rng, urls)
    pages.append(large_page(rng, urls, start, large_page_mb))
    pages += other_language_pages(rng, urls, start)
    pages.append(blocked_url_page(rng, start))
    pages += non_html_pages(rng, urls)

    sentinel = _article_page("after_broken", rng, urls, english_article(rng, start), rng.choice(EN_SITES))
    truncated = _article_page("truncated", rng, urls, english_article(rng, start), rng.choice(EN_SITES))
    broken_url = urls.other(rng.choice(EN_SITES), "broken/record")

    categories: dict[str, list[str]] = {name: [] for name in CATEGORIES}
    duplicate_of: dict[str, str] = {}
    for page in (*pages, sentinel, truncated):
        categories[page.category].append(page.url)
        if page.category in ("exact_duplicate", "near_duplicate") and page.source is not None:
            duplicate_of[page.url] = page.source.url
    categories["broken_header"].append(broken_url)
    categories["pii_strings"] = pii_strings

    with written_file(path) as tmp, open(tmp, "wb") as out:
        writer = _SampleWriter(out, seed, start)
        writer.write_warcinfo(seed)
        for page in order_pages(rng, pages):
            when = writer.tick()
            writer.write_page(page, when + timedelta(days=14) if page.recrawl else when)
        records_before_broken = writer.n_records
        writer.write_raw_member(broken_header_bytes(broken_url))
        writer.write_page(sentinel, writer.tick())
        writer.write_truncated_page(truncated, writer.tick())
    return SampleManifest(str(path), categories, duplicate_of, writer.n_records, records_before_broken)


# ---------------------------------------------------------------------------------------------------
# Instruction data (Ziya2 stage 2 trains it as unsupervised text)
# ---------------------------------------------------------------------------------------------------

_TASKS = {
    "en": [
        ("Give this passage a title.", lambda a: a.paragraphs[0], lambda a: a.title),
        (
            "Which section of a news site does this passage belong to?",
            lambda a: a.paragraphs[0],
            lambda a: a.section,
        ),
        (
            "Repeat the first sentence of this passage.",
            lambda a: a.paragraphs[1],
            lambda a: a.paragraphs[1].split(". ")[0] + ".",
        ),
    ],
    "zh": [
        ("给下面这段文字拟一个标题。", lambda a: a.paragraphs[0], lambda a: a.title),
        ("下面这段文字属于新闻网站的哪个栏目？", lambda a: a.paragraphs[0], lambda a: a.section),
        (
            "复述这段文字的第一句话。",
            lambda a: a.paragraphs[1],
            lambda a: a.paragraphs[1].split("。")[0] + "。",
        ),
    ],
}


def sample_instructions(seed: int = 0, n: int = 200) -> list[dict]:
    """`n` instruction/response pairs in Chinese and English (half each) in the clean shard format."""
    rng, now = random.Random(seed), datetime(2024, 6, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(n):
        lang = "zh" if i % 2 else "en"
        article = (chinese_article if lang == "zh" else english_article)(rng, now)
        instruction, given, answer = rng.choice(_TASKS[lang])
        text = f"<human>: {instruction}\n{given(article)}\n<bot>: {answer(article)}"
        rows.append(_instruction_row(f"instruct-{seed}-{i}", text, lang, "sample_instructions"))
    return rows


def sample_math(seed: int = 0, n: int = 200) -> list[dict]:
    """`n` worked arithmetic word problems in Chinese and English (half each), in the clean shard format."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, c = rng.randint(3, 60), rng.randint(2, 12), rng.randint(1, 40)
        total = a * b - c
        if i % 2:
            text = (
                f"问题：一个书架有{b}层，每层放{a}本书，借出去{c}本后还剩多少本？\n"
                f"解答：书架上原有 {a} × {b} = {a * b} 本书。借出 {c} 本后剩下 {a * b} − {c} = {total} 本。\n"
                f"答案：{total}"
            )
        else:
            text = (
                f"Question: A shelf has {b} rows of {a} books. After {c} books are lent out, how many are left?\n"
                f"Solution: The shelf holds {a} × {b} = {a * b} books. Lending {c} leaves {a * b} − {c} = {total}.\n"
                f"Answer: {total}"
            )
        rows.append(_instruction_row(f"math-{seed}-{i}", text, "zh" if i % 2 else "en", "sample_math"))
    return rows


def sample_articles(seed: int = 0, n: int = 40, lang: str = "en") -> list[dict]:
    """`n` articles in one language as clean-format rows, their topic in `metadata.topic`: held-out
    text for perplexity, and labelled data for a topic classifier (a seed other than the WARC's gives
    other articles from the same sentence pools)."""
    rng, now = random.Random(seed), datetime(2024, 6, 1, tzinfo=timezone.utc)
    make, sep = (chinese_article, "\n") if lang == "zh" else (english_article, "\n\n")
    rows = []
    for i in range(n):
        article = make(rng, now)
        text = article.title + sep + sep.join(article.paragraphs)
        row = _instruction_row(f"articles-{lang}-{seed}-{i}", text, lang, "sample_articles")
        row["metadata"] = {"topic": TOPICS.get(article.section, article.section)}
        rows.append(row)
    return rows


# one topic label for the English and the Chinese section of the same subject
TOPICS = {"keji": "tech", "kexue": "science", "lishi": "history", "lvyou": "travel", "meishi": "food",
          "tiyu": "sport", "yuanyi": "garden"}  # fmt: skip

# the sentence pools hold eleven sentences a subject, in this order (a few at the end fit none)
_TOPIC_BLOCKS = {"science": (0, 11), "food": (11, 22), "travel": (22, 33), "history": (33, 44),
                 "sport": (44, 54), "tech": (54, 65), "garden": (65, 75)}  # fmt: skip


def sample_topic_articles(seed: int = 0, n: int = 200, lang: str = "en") -> list[dict]:
    """`n` articles whose every sentence is on their topic (`metadata.topic`): labelled data for the
    demo's topic classifier."""
    rng = random.Random(seed)
    pool, titles = (ZH_SENTENCES, ZH_TITLES) if lang == "zh" else (EN_SENTENCES, EN_TITLES)
    section_of = {v: k for k, v in TOPICS.items()}
    rows = []
    for i in range(n):
        topic = rng.choice(sorted(_TOPIC_BLOCKS))
        start, end = _TOPIC_BLOCKS[topic]
        sentences = rng.sample(pool[start:end], rng.randint(4, 8))
        title = rng.choice(titles[section_of[topic] if lang == "zh" else topic])
        text = title + "\n" + ("" if lang == "zh" else " ").join(sentences)
        row = _instruction_row(f"topic-{lang}-{seed}-{i}", text, lang, "sample_topics")
        row["metadata"] = {"topic": topic}
        rows.append(row)
    return rows


_SPAM = {
    "en": "cheap best discount flights hotels deals online free shipping sale buy now watches replica bags "
    "offer click here limited casino bonus win".split(),
    "zh": "免费 领取 优惠券 点击 这里 特价 秒杀 包邮 代购 加微信 返利 中奖 最低价 限时 抢购".split(),
}
_MENU = {
    "en": ["Home", "About us", "Contact", "Login", "Register", "Privacy policy", "Terms of use", "Sitemap"],
    "zh": ["首页", "关于我们", "联系我们", "登录", "注册", "隐私政策", "使用条款", "网站地图"],
}


def sample_low_quality(seed: int = 0, n: int = 200) -> list[dict]:
    """`n` low-quality documents (keyword spam, menus and footers, gibberish), Chinese and English,
    in the clean shard format: the negative side of the demo's quality classifier."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lang = "zh" if i % 2 else "en"
        sep = "" if lang == "zh" else " "
        kind = ("spam", "menu", "gibberish")[(i // 2) % 3]
        if kind == "spam":
            lines = [sep.join(rng.choice(_SPAM[lang]) for _ in range(rng.randint(3, 8))) for _ in range(12)]
        elif kind == "menu":
            lines = [" | ".join(rng.sample(_MENU[lang], 5)) for _ in range(6)] + [
                "© 2024 " + rng.choice(_MENU[lang])
            ]
        elif lang == "en":  # gibberish, as a broken page or a generator leaves it
            lines = [
                " ".join("".join(rng.choices("etaoinshrdlucmfwyp", k=rng.randint(2, 9))) for _ in range(60))
            ]
        else:
            lines = ["".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(150))]
        rows.append(_instruction_row(f"lowq-{seed}-{i}", "\n".join(lines), lang, "sample_low_quality"))
    return rows


def _instruction_row(id_: str, text: str, lang: str, source: str) -> dict:
    return {
        "id": id_,
        "text": text,
        "url": None,
        "lang": lang,
        "lang_score": 1.0,
        "source": source,
        "metadata": None,
    }


def write_sample_rows(path: str | Path, rows: list[dict]) -> Path:
    """Write rows as one Parquet shard of the clean format, ready for `run.py tokenize`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cpt.shards import CLEAN_SCHEMA

    path = Path(path)
    with written_file(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), tmp)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cpt.demo.sample_warc",
        description=(
            "Write a deterministic sample gzip WARC (English and Chinese articles, duplicates, spam, "
            "PII, bad encodings, empty and huge pages, non-HTML records, and a broken tail: a garbage "
            "header, a sentinel article, a truncated gzip member) for demos, tests and benchmarks."
        ),
        epilog=(
            "Example: python -m cpt.demo.sample_warc runs/demo/warc/sample.warc.gz "
            "--manifest runs/demo/warc/manifest.json"
        ),
    )
    parser.add_argument("out", metavar="OUT.warc.gz", help="WARC file to write (parent folders are created)")
    parser.add_argument(
        "--seed", type=int, default=0, help="RNG seed; the same seed gives the same bytes (0)"
    )
    parser.add_argument(
        "--articles",
        type=int,
        default=40,
        help="English articles and, separately, Chinese articles to write (40, at least 5)",
    )
    parser.add_argument("--large-mb", type=float, default=2.0, help="size of the one huge page in MB (2.0)")
    parser.add_argument(
        "--manifest",
        metavar="PATH",
        help="also write a JSON manifest: category -> planted URLs, PII strings, duplicates",
    )
    parser.add_argument(
        "--instructions",
        metavar="PATH.parquet",
        help="also write instruction/response pairs (Chinese and English) as a clean-format Parquet shard",
    )
    parser.add_argument(
        "--math", metavar="PATH.parquet", help="also write worked arithmetic problems (Chinese and English)"
    )
    parser.add_argument(
        "--topics",
        metavar="PATH.parquet",
        help="also write articles labelled with their topic (metadata.topic)",
    )
    parser.add_argument(
        "--low-quality",
        metavar="PATH.parquet",
        help="also write low-quality documents (spam, menus, gibberish)",
    )
    parser.add_argument(
        "--heldout", metavar="DIR", help="also write held-out articles as DIR/en/ and DIR/zh/ Parquet shards"
    )
    parser.add_argument(
        "--extra-count",
        type=int,
        default=200,
        help="rows of --instructions and of --math to write, a fifth of it per --heldout language (200)",
    )
    args = parser.parse_args(argv)
    if args.articles < 5:
        parser.error("--articles must be at least 5")
    manifest = write_sample_warc(
        args.out, seed=args.seed, n_articles=args.articles, large_page_mb=args.large_mb
    )
    if args.manifest:
        write_text(args.manifest, manifest.to_json() + "\n")
    if args.heldout:
        for lang in ("en", "zh"):
            path = Path(args.heldout) / lang / "articles.parquet"
            write_sample_rows(path, sample_articles(args.seed + 1, args.extra_count // 5, lang))
            print(f"wrote {path}: {args.extra_count // 5} held-out {lang} articles")
    if args.topics:
        rows = [
            r for lang in ("en", "zh") for r in sample_topic_articles(args.seed + 2, args.extra_count, lang)
        ]
        write_sample_rows(args.topics, rows)
        print(f"wrote {args.topics}: {len(rows)} articles labelled with their topic (metadata.topic)")
    for path, make, what in (
        (args.instructions, sample_instructions, "instruction/response pairs"),
        (args.math, sample_math, "worked math problems"),
        (args.low_quality, sample_low_quality, "low-quality documents (spam, menus, gibberish)"),
    ):
        if path:
            write_sample_rows(path, make(args.seed, args.extra_count))
            print(f"wrote {path}: {args.extra_count} {what}")
    size = Path(args.out).stat().st_size
    print(
        f"wrote {args.out}: {manifest.n_records} WARC records, {size:,} bytes, seed {args.seed} "
        f"(a strict reader stops after {manifest.records_before_broken}: "
        "broken header, sentinel, truncated tail)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
