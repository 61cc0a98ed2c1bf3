"""Small original articles that a clean pipeline should keep, in English and Chinese."""

ZH_ARTICLE = "\n".join(
    [
        "春天来到江南的小镇，河边的柳树长出了嫩绿的新芽，老人们坐在石桥上聊天。",
        "镇上的图书馆今年重新装修，增加了儿童阅览室和一个安静的自习区域。",
        "馆长介绍说，每到周末都有很多家长带着孩子来这里读书，气氛非常热闹。",
        "附近的农民开始在田里播种水稻，他们说今年的雨水比往年更加充足。",
        "一位年轻的厨师在老街上开了一家面馆，用本地的小麦和新鲜的蔬菜做汤面。",
        "游客们喜欢沿着河岸散步，拍下古老的白墙黑瓦和远处起伏的青山。",
        "学校组织学生参观了当地的丝绸工厂，了解蚕丝是怎样变成漂亮的布料的。",
        "晚上，广场上有人跳舞，也有人下棋，孩子们在灯光下追逐打闹，直到很晚才回家。",
        "这个小镇虽然不大，但是它的历史已经有一千多年，很多传统的手艺一直流传到今天。",
        "当地政府计划修建一条新的自行车道，让居民和游客可以更方便地欣赏田园风光。",
    ]
)
EN_ARTICLE = "\n".join(
    [
        "The village library reopened this spring after a long renovation that added a reading room for children.",
        "Parents say that on weekends the building is full of families who come to borrow books and attend talks.",
        "Farmers near the river have started planting their fields, and they expect a good harvest if the rain holds.",
        "A young chef opened a small restaurant on the old street, cooking soups with vegetables from local gardens.",
        "Visitors like to walk along the water in the evening and take photographs of the white houses and the hills.",
        "The school took its pupils to the silk workshop, where they learned how thread is spun and dyed by hand.",
        "In the square there is music on Saturday nights, and children play until their parents call them home.",
        "The town council plans to build a cycle path so that residents can reach the countryside without a car.",
    ]
)

ARTICLES = [EN_ARTICLE, ZH_ARTICLE]
